"""KV-cached, batched sampling (temperature, top-k, top-p, stop strings) and the
`checkpoint` generator built on it: the cache computes what recomputing would, a row's text
depends on its seed and not on its batch, and stop strings never leak into a stream."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_workspace import tiny_workspace

from dte_aar.agent import Agent, BatchDecoder, SamplingParams, _Row, filter_logits
from dte_aar.arena import load_arena
from dte_aar.config import load_settings
from dte_aar.hookspecs import CycleContext, GenerationRequest
from dte_aar.model import GrowingTransformer, ModelConfig
from dte_aar.progress import NullProgress
from dte_aar.store import Store
from dte_aar_plugins.checkpoint import CheckpointConfig, CheckpointGenerator


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_workspace(tmp_path_factory.mktemp("ckpt") / "ws")


@pytest.fixture(scope="module")
def agent(ws: Path) -> Agent:
    with Store.open(ws, readonly=True) as store:
        info = store.latest_checkpoint()
    assert info is not None
    return Agent.load(info.path, ws, info.sha256)


@pytest.fixture(scope="module")
def model() -> GrowingTransformer:
    """Random weights, both attention priors on, two blocks: every cached path is used."""
    cfg = ModelConfig(
        vocab_size=97,
        d_model=32,
        n_heads=4,
        d_ff=64,
        seq_len=32,
        n_layers=2,
        cooc_rank=4,
        key_bias=True,
    )
    torch.manual_seed(0)
    m = GrowingTransformer(cfg)
    m.set_cooc_factors(torch.randn(97, 4), torch.randn(97, 4))
    m.init_key_bias([5, 6], 1.5)
    for block in m.blocks:
        block.attn.proj.weight.data.normal_(0, 0.2)  # make every block matter
    return m.eval()


def recompute_greedy(model: GrowingTransformer, prompt: list[int], n: int) -> list[int]:
    idx = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            nxt = model(idx)[0][0, -1].argmax()
            idx = torch.cat((idx, nxt.view(1, 1)), dim=1)
    return idx[0, len(prompt) :].tolist()


def decode(model, prompts, params, seeds, steps) -> list[list[int]]:
    dec = BatchDecoder(model, prompts, params, seeds)
    out: list[list[int]] = [[] for _ in prompts]
    for _ in range(steps):
        for row, token in zip(list(dec.rows), dec.step(), strict=True):
            out[row].append(token)
    return out


def test_kv_cache_matches_recomputing_the_prefix(model) -> None:
    prompts = [[1, 2, 3, 4, 5, 6], [7, 5, 9, 6, 11, 12]]
    greedy = SamplingParams(max_new_tokens=20, temperature=0)
    got = decode(model, prompts, greedy, [0, 0], 20)
    assert got == [recompute_greedy(model, p, 20) for p in prompts]


def test_the_window_slides_past_seq_len(model) -> None:
    params = SamplingParams(max_new_tokens=60, temperature=0)
    (got,) = decode(model, [list(range(1, 21))], params, [0], 60)
    assert len(got) == 60
    assert got[:12] == recompute_greedy(model, list(range(1, 21)), 12)  # until the window fills


def test_a_row_depends_on_its_seed_not_its_batch(model) -> None:
    params = SamplingParams(max_new_tokens=15, temperature=1.0, top_k=20, top_p=0.9)
    prompts = [[3, 1, 4, 1, 5], [9, 2, 6, 5, 3], [5, 8, 9, 7, 9]]
    batched = decode(model, prompts, params, [11, 12, 13], 15)
    seeds = [11, 12, 13]
    alone = [decode(model, [p], params, [s], 15)[0] for p, s in zip(prompts, seeds, strict=True)]
    assert batched == alone
    assert decode(model, [prompts[0]], params, [99], 15)[0] != batched[0]


def test_dropping_finished_rows_keeps_the_others_exact(model) -> None:
    params = SamplingParams(max_new_tokens=12, temperature=0)
    prompts = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    dec = BatchDecoder(model, prompts, params, [0, 0, 0])
    out: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for step in range(12):
        for row, token in zip(list(dec.rows), dec.step(), strict=True):
            out[row].append(token)
        if step == 3:
            dec.drop({1})
    assert out[0] == recompute_greedy(model, prompts[0], 12)
    assert out[2] == recompute_greedy(model, prompts[2], 12)
    assert len(out[1]) == 4


def test_filters() -> None:
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, 1.0, 2, None)[0, 2:]).all()
    probs = torch.softmax(logits, -1)[0]  # 0.64, 0.24, 0.09, ...
    kept = ~torch.isinf(filter_logits(logits, 1.0, None, 0.8)[0])
    assert kept.tolist() == [True, True, False, False, False]  # 0.64 < 0.8 <= 0.64 + 0.24
    assert probs[:2].sum() >= 0.8
    only = ~torch.isinf(filter_logits(logits, 1.0, None, 0.01)[0])
    assert only.tolist() == [True, False, False, False, False]  # the top token always stays
    assert torch.allclose(filter_logits(logits, 2.0, None, None), logits / 2)


class CharTokenizer:
    """decode(ids) = the characters with those code points."""

    def decode(self, ids: list[int]) -> str:
        return "".join(map(chr, ids))


def test_stop_strings_never_leak_into_a_stream() -> None:
    params = SamplingParams(max_new_tokens=50, stop=("</s>", "\nUser:"))
    row = _Row(CharTokenizer(), params, prompt_tokens=3)  # type: ignore[arg-type]
    deltas = []
    for c in "ab<c</s>zz":
        deltas.append(row.add(ord(c)))
        if row.finish:
            break
    assert "".join(deltas) == "ab<c" and row.finish == "stop"
    assert deltas[:3] == ["a", "b", ""]  # "<" waits: it may start "</s>"
    assert row.completion().text == "ab<c" and row.completion().tokens == 8
    row = _Row(CharTokenizer(), SamplingParams(max_new_tokens=3), 1)  # type: ignore[arg-type]
    assert [row.add(ord(c)) for c in "xyz"] == ["x", "y", "z"] and row.finish == "length"


def test_agent_greedy_top_k_1_and_tiny_top_p_agree(agent: Agent) -> None:
    prompt = "User: What is a reservoir?\nDeep Tree Echo:"
    greedy = agent.generate(prompt, max_new_tokens=16, temperature=0)
    assert agent.generate(prompt, max_new_tokens=16, temperature=1.0, top_k=1, seed=5) == greedy
    assert agent.generate(prompt, 16, 1.0, top_k=None, seed=6, top_p=1e-6) == greedy


def test_agent_stop_strings_cut_the_text(agent: Agent) -> None:
    prompt = "User: hi\nDeep Tree Echo:"
    full = agent.generate(prompt, max_new_tokens=30, temperature=0)
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 2]
    if not stop.strip() or "\ufffd" in full.text:
        pytest.skip("greedy text unusable for this check")
    cut = agent.generate(prompt, max_new_tokens=30, temperature=0, stop=[stop])
    assert cut.text == full.text[: full.text.index(stop)] and cut.finish_reason == "stop"
    params = SamplingParams(max_new_tokens=30, temperature=0, stop=(stop,))
    deltas = [d for _, d, _ in agent.stream_batch([prompt], params, [0])]
    assert "".join(deltas) == cut.text


def test_agent_batches_mixed_prompt_lengths(agent: Agent) -> None:
    prompts = [
        "User: hi\nDeep Tree Echo:",
        "User: a longer question here\nDeep Tree Echo:",
        "x " * 200,
        "User: hi\nDeep Tree Echo:",
    ]
    params = SamplingParams(max_new_tokens=10, temperature=0.9, top_k=30, top_p=0.95)
    batch = agent.generate_batch(prompts, params, [1, 2, 3, 1])
    assert batch == [
        agent.generate_batch([p], params, [s])[0]
        for p, s in zip(prompts, [1, 2, 3, 1], strict=True)
    ]
    assert batch[0] == batch[3]  # same prompt, same seed
    window = agent.model.config.seq_len - 10
    assert batch[2].prompt_tokens == window  # the long prompt was cropped to the window
    assert all(c.finish_reason in ("stop", "length") for c in batch)


def context(ws: Path, store: Store, **plugin: object) -> CycleContext:
    settings = load_settings(ws)
    return CycleContext(
        run_id=1,
        cycle=1,
        settings=settings.model_copy(
            update={"generate": settings.generate.model_copy(update={"max_new_tokens": 12})}
        ),
        workspace=ws,
        arena=load_arena(settings.arena),
        store=store,
        checkpoint=store.latest_checkpoint(),
        progress=NullProgress(),
        log_metric=lambda *a: None,
        plugin_config=lambda name: dict(plugin) if name == "checkpoint" else {},
    )


def test_checkpoint_generator_is_the_same_whatever_the_batch_size(ws: Path) -> None:
    reqs = [
        GenerationRequest(
            slot=i,
            prompt=f"Tell me about ring {i}.",
            style_example="Seed text. " * (i % 3),
            seed=40 + i,
        )
        for i in range(5)
    ]
    with Store.open(ws, readonly=True) as store:
        one = list(CheckpointGenerator().generate(reqs, context(ws, store, batch_size=1)))
        four = list(CheckpointGenerator().generate(reqs, context(ws, store, batch_size=4)))
        resumed = list(CheckpointGenerator().generate(reqs[2:], context(ws, store, batch_size=4)))
        nucleus = list(CheckpointGenerator().generate(reqs, context(ws, store, top_p=0.5)))
    assert one == four and resumed == four[2:]
    assert [c.slot for c in four] == [0, 1, 2, 3, 4]
    assert {c.model for c in four} == {"checkpoint:cycle-0"}
    assert all(0 <= c.tokens <= 12 and "\nUser:" not in c.text for c in four)
    # a reply that used the whole budget says so; one that stopped early says "stop"
    assert all(c.finish_reason == ("length" if c.tokens == 12 else "stop") for c in four)
    assert nucleus != four


def test_checkpoint_config_is_validated() -> None:
    assert CheckpointConfig().stop == ["\nUser:", "\nSystem:"]
    with pytest.raises(ValueError):
        CheckpointConfig(top_p=1.5)
    with pytest.raises(ValueError):
        CheckpointConfig(batch_size=0)
