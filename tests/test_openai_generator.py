"""The `openai` generator end to end against `dte serve` on loopback: persona and style in
the system message, retries on an injected 429 and 500, the auth failure, the spending caps,
and a whole cycle after which the key is nowhere in SQLite, events or logs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from tiny_workspace import run_cycles, tiny_workspace

from dte_aar.arena import load_arena
from dte_aar.config import load_settings
from dte_aar.hookspecs import CycleContext, GenerationRequest
from dte_aar.progress import NullProgress
from dte_aar.serve import create_app, running_server
from dte_aar.store import Store
from dte_aar_plugins import openai_gen
from dte_aar_plugins.openai_gen import (
    DEFAULT_PRICES,
    OpenAIGenerator,
    OpenAIGeneratorError,
    Price,
    price_for,
)

KEY = "sk-test-RIGHT-secret-4242"
WRONG = "sk-WRONG-secret-9999"
PRICES = {"dte-cycle-0000": {"input": 1000.0, "output": 1000.0}}  # $0.001 a token


class FaultInjector:
    """Wraps the server: records every chat request, and answers the next ones with the
    queued statuses (None lets a request through) before passing requests on."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.faults: list[int | None] = []
        self.bodies: list[dict[str, Any]] = []
        self.statuses: list[int] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.bodies.append(json.loads(body))
        fault = self.faults.pop(0) if self.faults else None
        if fault is not None:
            self.statuses.append(fault)
            payload = json.dumps(
                {
                    "error": {
                        "message": "injected",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
            ).encode()
            headers = [(b"content-type", b"application/json")]
            if fault == 429:
                headers.append((b"retry-after-ms", b"10"))
            await send({"type": "http.response.start", "status": fault, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        sent: list[int] = []

        async def record(message: dict) -> None:
            if message["type"] == "http.response.start":
                sent.append(message["status"])
            await send(message)

        await self.app(scope, replay, record)
        self.statuses.extend(sent)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_workspace(tmp_path_factory.mktemp("openai") / "ws")


@pytest.fixture(scope="module")
def server(ws: Path):
    injector = FaultInjector(create_app(ws, api_key=KEY))
    with running_server(injector) as url:
        yield url, injector


@pytest.fixture
def injector(server) -> FaultInjector:
    injector = server[1]
    injector.faults.clear()
    injector.bodies.clear()
    injector.statuses.clear()
    return injector


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return KEY


class Metrics(dict):
    def __call__(self, name: str, value: float, step: int | None = None) -> None:
        self[name] = value


def context(ws: Path, store: Store, cycle: int, **config: Any) -> CycleContext:
    settings = load_settings(ws)
    return CycleContext(
        run_id=1,
        cycle=cycle,
        settings=settings,
        workspace=ws,
        arena=load_arena(settings.arena),
        store=store,
        checkpoint=None,
        progress=NullProgress(),
        log_metric=Metrics(),
        plugin_config=lambda name: dict(config) if name == "openai" else {},
    )


def requests(n: int, style: str | None = "I keep my memories as echoes.") -> list:
    return [
        GenerationRequest(
            slot=i, prompt=f"Tell me about ring {i}.", style_example=style, seed=100 + i
        )
        for i in range(n)
    ]


def config(url: str, **extra: Any) -> dict[str, Any]:
    return {"base_url": url, "model": "dte-cycle-0000", "max_tokens": 8, "prices": PRICES, **extra}


def store_all(store: Store, cycle: int, candidates: list) -> None:
    """What the cycle does with each candidate."""
    for c in candidates:
        store.add_sample(
            cycle=cycle,
            source="generated",
            generator="openai",
            slot=c.slot,
            model=c.model,
            prompt=c.prompt,
            text=c.text,
            tokens=c.tokens,
            cost=c.cost,
        )


def test_samples_carry_persona_style_usage_and_cost(ws, server, injector, key) -> None:
    url, _ = server
    with Store.open(ws) as store:
        ctx = context(ws, store, 11, **config(url))
        got = list(OpenAIGenerator().generate(requests(3), ctx))
        again = list(OpenAIGenerator().generate(requests(3), ctx))
    assert sorted(c.slot for c in got) == [0, 1, 2]
    assert sorted(got, key=lambda c: c.slot) == sorted(again, key=lambda c: c.slot)  # seeded
    for c in got:
        assert c.model == "dte-cycle-0000" and c.prompt == f"Tell me about ring {c.slot}."
        assert 0 < c.tokens <= 8 and c.text == c.text.strip() and c.text
        assert c.finish_reason == ("length" if c.tokens == 8 else "stop")  # the server's word
        assert c.cost > 0.001 * c.tokens  # prompt tokens are paid for too
    body = injector.bodies[0]
    system, user = body["messages"]
    assert system["role"] == "system" and "You are Deep Tree Echo." in system["content"]
    assert "I keep my memories as echoes." in system["content"]
    assert user == {"role": "user", "content": body["messages"][1]["content"]}
    assert {b["seed"] for b in injector.bodies[:3]} == {100, 101, 102}
    assert ctx.log_metric["openai_cost_usd"] == pytest.approx(sum(c.cost for c in again))


def test_a_429_and_a_500_are_retried(ws, server, injector, key) -> None:
    url, _ = server
    injector.faults.extend([429, 500])
    with Store.open(ws) as store:
        ctx = context(ws, store, 12, **config(url, max_concurrency=1, max_retries=3))
        got = list(OpenAIGenerator().generate(requests(2), ctx))
    assert sorted(c.slot for c in got) == [0, 1]
    assert injector.statuses == [429, 500, 200, 200]


def test_retries_run_out_into_a_clear_failure(ws, server, injector, key) -> None:
    url, _ = server
    injector.faults.extend([None, 503, 503])
    with Store.open(ws) as store:
        ctx = context(ws, store, 13, **config(url, max_concurrency=1, max_retries=1))
        gen = OpenAIGenerator().generate(requests(2), ctx)
        first = next(gen)  # the first request got through and is yielded
        with pytest.raises(OpenAIGeneratorError, match=r"1 of 2 requests failed"):
            next(gen)
    assert first.slot == 0


def test_an_auth_error_disables_the_generator_with_one_line(ws, server, injector, monkeypatch):
    url, _ = server
    monkeypatch.setenv("OPENAI_API_KEY", WRONG)
    with Store.open(ws) as store:
        ctx = context(ws, store, 14, **config(url, max_concurrency=1))
        got = []
        with pytest.raises(OpenAIGeneratorError) as info:
            for candidate in OpenAIGenerator().generate(requests(4), ctx):
                got.append(candidate)
    message = str(info.value)
    assert got == [] and len(injector.bodies) == 1  # stopped after the first refusal
    assert "authentication failed (401)" in message and "OPENAI_API_KEY" in message
    assert "\n" not in message and WRONG not in message and "WRONG" not in message


def test_missing_key_for_openai_itself_is_one_line(ws, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with Store.open(ws) as store, pytest.raises(OpenAIGeneratorError, match="OPENAI_API_KEY"):
        list(OpenAIGenerator().generate(requests(1), context(ws, store, 15)))


def test_cycle_cap_stops_generation_cleanly(ws, server, injector, key) -> None:
    url, _ = server
    cap = 0.5
    with Store.open(ws) as store:
        ctx = context(ws, store, 16, **config(url, max_concurrency=1, cycle_budget_usd=cap))
        got = list(OpenAIGenerator().generate(requests(8), ctx))  # no exception
        store_all(store, 16, got)
        events = store.db.execute(
            "select data from events where kind = 'openai_budget_reached' and cycle = 16"
        ).fetchall()
        # A resumed cycle starts from what is stored and stops at once.
        more = list(OpenAIGenerator().generate(requests(8)[len(got) :], ctx))
    assert 0 < len(got) < 8 and more == []
    assert sum(c.cost for c in got) <= cap
    assert len(injector.bodies) == len(got)
    assert json.loads(events[0][0])["cap"] == "cycle"


def test_run_cap_counts_every_stored_openai_sample(ws, server, injector, key) -> None:
    url, _ = server
    with Store.open(ws) as store:
        store.add_sample(
            cycle=17, source="generated", generator="openai", slot=0, text="paid", cost=2.0
        )
        ctx = context(ws, store, 18, **config(url, run_budget_usd=2.0))
        got = list(OpenAIGenerator().generate(requests(2), ctx))
        event = store.db.execute(
            "select data from events where kind = 'openai_budget_reached' and cycle = 18"
        ).fetchone()
    assert got == [] and injector.bodies == []
    assert json.loads(event[0])["cap"] == "run"


def test_caps_need_a_price(ws, server, key) -> None:
    url, _ = server
    with Store.open(ws) as store, pytest.raises(OpenAIGeneratorError, match="no price"):
        ctx = context(ws, store, 19, base_url=url, model="dte", cycle_budget_usd=1.0)
        list(OpenAIGenerator().generate(requests(1), ctx))


def test_price_table() -> None:
    prices = {**DEFAULT_PRICES, "my-model": Price(input=1, output=2)}
    assert price_for("gpt-4o-mini", prices) == Price(input=0.15, output=0.60)
    assert price_for("gpt-4o-mini-2024-07-18", prices) == Price(input=0.15, output=0.60)
    assert price_for("ft:gpt-4o-mini-2024-07-18:org::abc", prices).input == 0.30
    assert price_for("gpt-4o-2024-08-06", prices).input == 2.50
    assert price_for("my-model", prices).output == 2
    assert price_for("llama3", prices) is None


def test_config_is_validated_by_the_cycle() -> None:
    from dte_aar.config import ConfigError, Settings
    from dte_aar.cycle import validate_plugin_config

    bad = Settings(plugins={"openai": {"max_concurrency": 0}})
    with pytest.raises(ConfigError, match="plugins.openai.max_concurrency"):
        validate_plugin_config(OpenAIGenerator(), bad)
    typo = Settings(plugins={"openai": {"modle": "x"}})
    with pytest.raises(ConfigError, match="plugins.openai.modle"):
        validate_plugin_config(OpenAIGenerator(), typo)


def test_a_whole_cycle_keeps_the_key_out_of_sqlite_events_and_logs(
    tmp_path: Path, server, monkeypatch, caplog, capsys
) -> None:
    """One cycle whose key is refused, one whose key works; then search everything."""
    url, _ = server
    ws = tiny_workspace(tmp_path / "ws")
    toml = (ws / "dte.toml").read_text().replace("generators = []", 'generators = ["openai"]')
    toml = toml.replace("samples_per_cycle = 0", "samples_per_cycle = 3")
    toml = toml.replace('curators = ["quality"]', "curators = []")
    toml += f'[plugins.openai]\nbase_url = "{url}"\nmodel = "dte"\nmax_tokens = 8\n'
    toml += '[plugins.openai.prices."dte-cycle-0000"]\ninput = 1000.0\noutput = 1000.0\n'
    (ws / "dte.toml").write_text(toml)
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("OPENAI_API_KEY", WRONG)
    run_cycles(ws, 1, plugins={"openai": openai_gen})
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    run_cycles(ws, 1, plugins={"openai": openai_gen})
    with Store.open(ws, readonly=True) as store:
        failed = store.db.execute(
            "select data from events where kind = 'plugin_failed' and cycle = 1"
        ).fetchall()
        samples = store.db.execute(
            "select cycle, slot, tokens, cost, model from samples where generator = 'openai'"
        ).fetchall()
    assert failed and "authentication failed" in failed[0][0]
    assert sorted((s[0], s[1]) for s in samples) == [(2, 0), (2, 1), (2, 2)]
    assert all(s[2] > 0 and s[3] > 0 and s[4] == "dte-cycle-0000" for s in samples)
    out = capsys.readouterr()
    places = {
        "logs": caplog.text,
        "output": out.out + out.err,
        **{p.name: p.read_bytes().decode("latin-1") for p in ws.rglob("*") if p.is_file()},
    }
    for secret in (KEY, WRONG, "RIGHT-secret", "WRONG-secret"):
        leaks = [where for where, text in places.items() if secret in text]
        assert leaks == [], f"{secret!r} found in {leaks}"
