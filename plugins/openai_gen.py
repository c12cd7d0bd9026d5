"""Built-in `openai` generator: gpt-4o-mini (or any OpenAI-compatible model) writes in the
persona's voice, as the seed document's bootstrap proposes.

Each request becomes one chat completion: the system message is the persona (the arena's
identity) plus the request's seed example for style, the user message is the arena prompt.
The key comes from ``OPENAI_API_KEY`` only and goes nowhere but the client: messages that
leave this module never carry it. ``[plugins.openai]`` picks any ``base_url`` and
``model`` (a fine-tuned model, vLLM, llama.cpp, Ollama, `dte serve`); without a ``model``
the one `dte finetune` recorded for that base URL is used, else gpt-4o-mini.

Requests run on an asyncio loop in a worker thread, at most ``max_concurrency`` at once,
and candidates are yielded as they complete (the cycle stores each at once, and its slots
make a resumed cycle skip what is done). The client retries 429, 5xx, timeouts and
connection errors with exponential backoff (honouring Retry-After) ``max_retries`` times.
An authentication error stops the generator for the cycle with one clear message, after
what succeeded is yielded. Cost per sample comes from the price table (USD per 1M tokens);
before each request the spending caps (per cycle, per run: all ``openai`` samples in the
store) are checked against what was spent plus the worst case of the requests in flight,
so a cap is not crossed; reaching one ends generation cleanly and records an event.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dte_aar.finetune import finetuned_model
from dte_aar.hookspecs import Candidate, CycleContext, GenerationRequest, PluginConfig, hookimpl

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-4o-mini"
OPENAI_BASE_URL = "https://api.openai.com/v1"

PERSONA_PROMPT = "You are {name}. {summary}"
STYLE_PROMPT = (
    "\n\nWrite as {name}, in the first person, in the voice of this example of your own "
    "writing:\n---\n{style_example}\n---\nAnswer the user directly. Do not mention these "
    "instructions."
)


class Price(BaseModel):
    """USD per 1M tokens."""

    model_config = ConfigDict(extra="forbid")
    input: float = Field(ge=0)
    output: float = Field(ge=0)


# Standard-tier list prices (USD / 1M tokens); ``ft:<base>`` prices that base's fine-tunes.
DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o-mini": Price(input=0.15, output=0.60),
    "ft:gpt-4o-mini-2024-07-18": Price(input=0.30, output=1.20),
    "gpt-4o": Price(input=2.50, output=10.00),
    "gpt-4.1": Price(input=2.00, output=8.00),
    "gpt-4.1-mini": Price(input=0.40, output=1.60),
    "gpt-4.1-nano": Price(input=0.10, output=0.40),
}


class OpenAIConfig(PluginConfig):
    """``[plugins.openai]``."""

    model: str | None = Field(None, description="unset: `dte finetune`'s model, else gpt-4o-mini")
    base_url: str | None = Field(None, description="unset: OPENAI_BASE_URL, else OpenAI's")
    max_concurrency: int = Field(8, ge=1, description="requests in flight")
    max_retries: int = Field(5, ge=0, description="client retries on 429/5xx/timeouts")
    timeout_s: float = Field(60.0, gt=0, description="per-request timeout")
    max_tokens: int = Field(400, ge=1, description="completion tokens per sample")
    temperature: float = Field(0.9, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    cycle_budget_usd: float | None = Field(None, ge=0, description="spending cap per cycle")
    run_budget_usd: float | None = Field(None, ge=0, description="cap on all openai samples")
    prices: dict[str, Price] = Field(
        default_factory=dict, description="USD per 1M tokens by model, over the defaults"
    )
    system_prompt: str | None = Field(
        None, description="template with {name}, {summary}, {style_example}"
    )


class OpenAIGeneratorError(Exception):
    """One line for the cycle's plugin-failure record; never carries the key."""


def base_url_of(cfg: OpenAIConfig) -> str:
    """The API root this generator talks to, as `dte finetune` records it."""
    url = cfg.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL
    return url.rstrip("/")


def price_for(model: str, prices: dict[str, Price]) -> Price | None:
    """The exact model, then ``ft:<base>`` for a fine-tune, then the longest key it extends
    (``gpt-4o-mini-2024-07-18`` is priced as ``gpt-4o-mini``)."""
    if model in prices:
        return prices[model]
    if model.startswith("ft:") and (base := ":".join(model.split(":")[:2])) in prices:
        return prices[base]
    keys = [k for k in prices if not k.startswith("ft:") and model.startswith(k)]
    return prices[max(keys, key=len)] if keys else None


def cost_of(price: Price | None, prompt_tokens: int, completion_tokens: int) -> float:
    if price is None:
        return 0.0
    return (prompt_tokens * price.input + completion_tokens * price.output) / 1e6


def system_message(ctx: CycleContext, request: GenerationRequest, template: str | None) -> str:
    identity = ctx.arena.identity
    values = {
        "name": identity.name,
        "summary": identity.summary,
        "style_example": (request.style_example or "").strip(),
    }
    if template is not None:
        return template.format(**values)
    text = PERSONA_PROMPT.format(**values)
    return text + STYLE_PROMPT.format(**values) if values["style_example"] else text


@dataclass
class Budget:
    """Spent so far plus the worst case of requests in flight, against the caps."""

    cycle_spent: float
    run_spent: float
    cycle_cap: float | None
    run_cap: float | None
    reserved: float = 0.0
    reached: str | None = None  # "cycle" or "run", once a request was refused

    def reserve(self, estimate: float) -> bool:
        for name, spent, cap in (
            ("cycle", self.cycle_spent, self.cycle_cap),
            ("run", self.run_spent, self.run_cap),
        ):
            if cap is not None and spent + self.reserved + estimate > cap:
                self.reached = self.reached or name
                return False
        self.reserved += estimate
        return True

    def settle(self, estimate: float, cost: float) -> None:
        self.reserved -= estimate
        self.cycle_spent += cost
        self.run_spent += cost


@dataclass
class _Outcome:
    """What the async side reports when it is done."""

    budget: Budget
    failures: list[str] = field(default_factory=list)
    auth_error: str | None = None


def iterate_async(produce: Callable[[Callable[[Any], None]], Awaitable[Any]]) -> Iterator[Any]:
    """Run ``produce(emit)`` on an event loop in a worker thread; yield each emitted item as
    it arrives, then the coroutine's result. Closing the iterator cancels the coroutine."""
    items: queue.Queue[tuple[str, Any]] = queue.Queue()
    state: dict[str, Any] = {}
    closed = threading.Event()

    def run() -> None:
        async def main() -> Any:
            state["loop"], state["task"] = asyncio.get_running_loop(), asyncio.current_task()
            if closed.is_set():
                raise asyncio.CancelledError
            return await produce(lambda item: items.put(("item", item)))

        try:
            items.put(("done", asyncio.run(main())))
        except BaseException as exc:  # handed to the consuming thread, which raises it
            items.put(("error", exc))

    thread = threading.Thread(target=run, name="dte-openai", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "error":
                raise value
            yield value
            if kind == "done":
                return
    finally:
        closed.set()
        if thread.is_alive() and "loop" in state:
            state["loop"].call_soon_threadsafe(state["task"].cancel)
        thread.join()


class OpenAIGenerator:
    name = "openai"
    Config = OpenAIConfig

    def generate(self, requests: list[GenerationRequest], ctx: CycleContext) -> Iterator[Candidate]:
        if not requests:
            return
        cfg = OpenAIConfig(**ctx.plugin_config(self.name))
        base_url = base_url_of(cfg)
        key = os.environ.get("OPENAI_API_KEY") or None
        if key is None and base_url == OPENAI_BASE_URL:
            raise OpenAIGeneratorError(
                "OPENAI_API_KEY is not set: the openai generator needs it for api.openai.com"
            )
        model = cfg.model or finetuned_model(ctx.store.db, base_url) or DEFAULT_MODEL
        prices = {**DEFAULT_PRICES, **cfg.prices}
        price = price_for(model, prices)
        if price is None and (cfg.cycle_budget_usd is not None or cfg.run_budget_usd is not None):
            raise OpenAIGeneratorError(
                f"no price for model {model!r}: add it to [plugins.openai.prices] so the "
                "spending caps can be enforced"
            )
        budget = Budget(
            cycle_spent=_spent(ctx, self.name, ctx.cycle),
            run_spent=_spent(ctx, self.name, None),
            cycle_cap=cfg.cycle_budget_usd,
            run_cap=cfg.run_budget_usd,
        )
        systems = [system_message(ctx, r, cfg.system_prompt) for r in requests]

        async def produce(emit: Callable[[Candidate], None]) -> _Outcome:
            return await self._produce(requests, systems, cfg, model, prices, key, budget, emit)

        outcome: _Outcome | None = None
        for item in iterate_async(produce):
            if isinstance(item, _Outcome):
                outcome = item
            else:
                yield item
        assert outcome is not None
        ctx.log_metric("openai_cost_usd", outcome.budget.cycle_spent, None)
        if outcome.budget.reached:
            reached = outcome.budget.reached
            spent = outcome.budget.cycle_spent if reached == "cycle" else outcome.budget.run_spent
            log.warning(
                "openai: %s spending cap reached ($%.4f); generation stopped", reached, spent
            )
            ctx.store.add_event(
                "openai_budget_reached",
                ctx.run_id,
                ctx.cycle,
                "generate",
                {"cap": reached, "spent_usd": round(spent, 6), "model": model},
            )
        if outcome.auth_error:
            raise OpenAIGeneratorError(outcome.auth_error)
        if outcome.failures:
            raise OpenAIGeneratorError(
                f"openai: {len(outcome.failures)} of {len(requests)} requests failed (first: "
                f"{outcome.failures[0]}); their slots stay open for the next run"
            )

    async def _produce(
        self,
        requests: list[GenerationRequest],
        systems: list[str],
        cfg: OpenAIConfig,
        model: str,
        prices: dict[str, Price],
        key: str | None,
        budget: Budget,
        emit: Callable[[Candidate], None],
    ) -> _Outcome:
        import openai

        outcome = _Outcome(budget)
        price = price_for(model, prices)
        gate = asyncio.Semaphore(cfg.max_concurrency)
        client = openai.AsyncOpenAI(
            api_key=key or "no-key",
            base_url=base_url_of(cfg),
            max_retries=cfg.max_retries,
            timeout=cfg.timeout_s,
        )

        def scrub(text: str) -> str:
            return text.replace(key, "***") if key else text

        async def one(request: GenerationRequest, system: str) -> None:
            async with gate:
                if outcome.auth_error or budget.reached:
                    return
                prompt_estimate = (len(system) + len(request.prompt)) // 2 + 16
                estimate = cost_of(price, prompt_estimate, cfg.max_tokens)
                if not budget.reserve(estimate):
                    return
                reply = None
                try:
                    reply = await client.chat.completions.create(
                        model=model,
                        messages=[
                            {"role": "system", "content": system},
                            {"role": "user", "content": request.prompt},
                        ],
                        max_tokens=cfg.max_tokens,
                        temperature=cfg.temperature,
                        top_p=cfg.top_p if cfg.top_p is not None else openai.omit,
                        seed=request.seed,
                    )
                except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                    outcome.auth_error = (
                        f"openai: authentication failed ({exc.status_code}) at "
                        f"{base_url_of(cfg)}: check OPENAI_API_KEY; generator disabled for "
                        "this cycle"
                    )
                except openai.APIError as exc:
                    status = getattr(exc, "status_code", None) or ""
                    outcome.failures.append(scrub(f"{type(exc).__name__} {status}".strip()))
                usage = reply.usage if reply is not None else None
                prompt_tokens = usage.prompt_tokens if usage else 0
                completion_tokens = usage.completion_tokens if usage else 0
                served = reply.model if reply is not None and reply.model else model
                cost = cost_of(price_for(served, prices) or price, prompt_tokens, completion_tokens)
                budget.settle(estimate, cost)
                if reply is None:
                    return
                text = (reply.choices[0].message.content or "").strip() if reply.choices else ""
                if not text:
                    outcome.failures.append("empty reply")
                    return
                emit(
                    Candidate(
                        slot=request.slot,
                        text=text,
                        prompt=request.prompt,
                        model=served,
                        tokens=completion_tokens,
                        cost=cost,
                        finish_reason=reply.choices[0].finish_reason,
                    )
                )

        async with client:
            await asyncio.gather(*(one(r, s) for r, s in zip(requests, systems, strict=True)))
        return outcome


def _spent(ctx: CycleContext, generator: str, cycle: int | None) -> float:
    """USD spent on this generator's stored samples (one cycle, or all of them)."""
    sql = "select coalesce(sum(cost), 0) from samples where generator = ?"
    params: list[Any] = [generator]
    if cycle is not None:
        sql += " and cycle = ?"
        params.append(cycle)
    return float(ctx.store.db.execute(sql, params).fetchone()[0])


@hookimpl
def register_generators(register) -> None:
    register(OpenAIGenerator())
