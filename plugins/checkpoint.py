"""Built-in `checkpoint` generator: the current model writes the next cycle's candidates.

Each prompt is framed the way the seed corpus renders chat ("User: ...\\nDeep Tree Echo:"),
after a seed example that rides along for style (:mod:`dte_aar.chat_template`); the
candidate is the persona's reply only. Requests are decoded in KV-cached batches; every
row samples from a generator seeded by its request, so a resumed cycle (other slots, other
batches) writes the same texts.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field

from dte_aar.agent import Agent, SamplingParams
from dte_aar.chat_template import PERSONA, format_prompt, reply_only, stop_sequences
from dte_aar.hookspecs import Candidate, CycleContext, GenerationRequest, PluginConfig, hookimpl
from dte_aar.train import resolve_device

__all__ = ["CheckpointConfig", "CheckpointGenerator", "format_prompt", "reply_only"]


class CheckpointConfig(PluginConfig):
    """``[plugins.checkpoint]``; length, temperature and top-k come from ``[generate]``."""

    batch_size: int = Field(8, ge=1, description="prompts decoded together")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling (unset: off)")
    stop: list[str] = Field(
        default_factory=lambda: list(stop_sequences()), description="strings that end a reply"
    )


class CheckpointGenerator:
    name = "checkpoint"
    Config = CheckpointConfig

    def generate(self, requests: list[GenerationRequest], ctx: CycleContext) -> Iterator[Candidate]:
        if ctx.checkpoint is None or not requests:  # cycle 0: no model to ask yet
            return
        cfg = CheckpointConfig(**ctx.plugin_config(self.name))
        g = ctx.settings.generate
        params = SamplingParams(
            max_new_tokens=g.max_new_tokens,
            temperature=g.temperature,
            top_k=g.top_k or None,
            top_p=cfg.top_p,
            stop=tuple(cfg.stop),
        )
        device = resolve_device(ctx.settings.train.device)
        agent = Agent.load(ctx.checkpoint.path, ctx.workspace, ctx.checkpoint.sha256, device=device)
        speaker = ctx.arena.identity.name if ctx.arena is not None else PERSONA
        model = f"checkpoint:cycle-{ctx.checkpoint.cycle}"
        for start in range(0, len(requests), cfg.batch_size):
            batch = requests[start : start + cfg.batch_size]
            prompts = [format_prompt(r.prompt, r.style_example, speaker) for r in batch]
            completions = agent.generate_batch(prompts, params, [r.seed for r in batch])
            for request, completion in zip(batch, completions, strict=True):
                yield Candidate(
                    slot=request.slot,
                    text=reply_only(completion.text),
                    prompt=request.prompt,
                    model=model,
                    tokens=completion.tokens,
                    finish_reason=completion.finish_reason,
                )


@hookimpl
def register_generators(register) -> None:
    register(CheckpointGenerator())
