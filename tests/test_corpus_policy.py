"""Accumulate, never replace; the synthetic share is capped; request counts follow policy."""

from pathlib import Path

from dte_aar.arena import load_arena
from dte_aar.config import GenerateSettings, load_settings
from dte_aar.corpus import requests_per_generator, within_cap
from dte_aar.cycle import Cycle
from dte_aar.hookspecs import Candidate, hookimpl
from dte_aar.plugins import load
from dte_aar.store import Store
from helpers import FAST_CONFIG


def test_requests_fixed_or_multiple_of_corpus() -> None:
    assert requests_per_generator(GenerateSettings(samples_per_cycle=7), 500) == 7
    multiple = GenerateSettings(corpus_multiple=1.5, max_samples_per_cycle=1000)
    assert requests_per_generator(multiple, 101) == 152
    assert requests_per_generator(multiple, 10_000) == 1000


def test_cap_arithmetic() -> None:
    assert within_cap(real=9, synthetic=0, cap=0.1)  # 1 of 10
    assert not within_cap(real=9, synthetic=1, cap=0.1)  # 2 of 11


class Sentences:
    """Writes distinct, well-formed first-person text built from seed sentences."""

    name = "sentences"

    def generate(self, requests, ctx):
        seed = [e.text for e in ctx.arena.seed if e.kind == "text"]
        for request in requests:
            body = seed[request.slot % len(seed)].split("\n\n")[1]
            yield Candidate(request.slot, f"{body} (variation {request.slot})", request.prompt)


class Plugin:
    @hookimpl
    def register_generators(self, register):
        register(Sentences())


def test_synthetic_share_cap_rejects_with_a_policy_verdict(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "dte.toml").write_text(
        FAST_CONFIG.replace("cycles = 3", 'cycles = 1\ngenerators = ["sentences"]').replace(
            "samples_per_cycle = 4", "samples_per_cycle = 6\nmax_synthetic_share = 0.02"
        )
    )
    settings = load_settings(ws)
    manager = load()
    manager.register(Plugin(), "sentences")
    with Store.open(ws) as store:
        Cycle(settings, ws, store, manager, load_arena(settings.arena)).run(1)
        counts = store.corpus_counts()
        real = counts["seed:accepted"]
        synthetic = counts.get("generated:accepted", 0)
        assert synthetic / (real + synthetic) <= 0.02
        assert synthetic == int(0.02 * real / 0.98)  # exactly as many as the cap allows
        policy = list(store.db["verdicts"].rows_where("curator = 'corpus_policy'"))
        assert len(policy) == 6 - synthetic
        assert all("exceed the cap of 0.02" in v["reason"] for v in policy)
        shares = store.metric_by_cycle("synthetic_share")
        assert shares[0] <= 0.02
