"""The growing transformer: growth preserves the function, freezing really freezes, the KV
cache computes what the uncached model computes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from dte_aar.model import (
    PRESETS,
    GrowingTransformer,
    KVCache,
    ModelConfig,
    config_flops_per_token,
    config_num_params,
)

CFG = ModelConfig(vocab_size=97, d_model=32, n_heads=4, d_ff=64, seq_len=16, target_layers=4)


def make(seed: int = 0, n_layers: int = 1) -> GrowingTransformer:
    return GrowingTransformer(
        replace(CFG, n_layers=n_layers), generator=torch.Generator().manual_seed(seed)
    )


def batch(seed: int = 1, B: int = 3, T: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, CFG.vocab_size, (B, T), generator=g)
    y = torch.randint(0, CFG.vocab_size, (B, T), generator=g)
    return x, y


def test_forward_shapes_and_loss_near_uniform_at_init() -> None:
    model = make()
    x, y = batch()
    logits, loss = model(x, y)
    assert logits.shape == (3, 16, CFG.vocab_size)
    # Small init: predictions close to uniform, so the loss is close to ln(vocab).
    assert abs(loss.item() - torch.log(torch.tensor(97.0)).item()) < 0.3
    assert model(x)[1] is None


def test_attention_is_causal() -> None:
    model = make(n_layers=2)
    x, _ = batch()
    x2 = x.clone()
    x2[:, 10:] = (x2[:, 10:] + 1) % CFG.vocab_size
    a, _ = model(x)
    b, _ = model(x2)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_init_is_seeded() -> None:
    a, b, c = make(seed=3), make(seed=3), make(seed=4)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.tok_emb.weight, c.tok_emb.weight)


@pytest.mark.parametrize("n_layers", [1, 3])
def test_identity_growth_preserves_the_function(n_layers: int) -> None:
    model = make(n_layers=n_layers)
    # Train a little first so the function is not the near-trivial init one.
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        model(*batch())[1].backward()
        opt.step()
    x, _ = batch(seed=5)
    with torch.no_grad():
        before, _ = model(x)
        model.grow("identity")
        after, _ = model(x)
    assert len(model.blocks) == n_layers + 1 == model.config.n_layers
    assert (after - before).abs().max().item() < 1e-6
    # The new block is not dead weight: its output projections learn on the first step.
    model(x, batch()[1])[1].backward()
    assert model.blocks[-1].attn.proj.weight.grad.abs().sum() > 0
    assert model.blocks[-1].mlp.proj.weight.grad.abs().sum() > 0


def test_copy_and_random_growth() -> None:
    model = make(n_layers=2)
    model.grow("copy")
    top, below = model.blocks[-1], model.blocks[-2]
    for pa, pb in zip(top.parameters(), below.parameters(), strict=True):
        assert torch.equal(pa, pb)
        assert pa.data_ptr() != pb.data_ptr()  # a copy, not the same tensors
    model.grow("random", generator=torch.Generator().manual_seed(9))
    assert model.blocks[-1].attn.proj.weight.abs().sum() > 0
    assert len(model.blocks) == 4
    with pytest.raises(ValueError, match="unknown growth"):
        model.grow("sideways")  # type: ignore[arg-type]


def test_frozen_params_get_no_grad_and_do_not_change() -> None:
    model = make(n_layers=3)
    model.set_trainable(1)
    assert model.frozen_mask() == [True, True, False]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("tok_emb") for n in frozen)
    assert any(n.startswith("blocks.0.") for n in frozen)
    assert any(n.startswith("blocks.1.") for n in frozen)
    assert all(n.startswith(("blocks.2.", "ln_f.", "head.")) for n in trainable)

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        loss = model(*batch())[1]
        loss.backward()
        for n, p in model.named_parameters():
            assert (p.grad is None) == (n in frozen), n
        opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    changed = [n for n, p in model.named_parameters() if n in trainable]
    assert all(not torch.equal(model.get_parameter(n), trainable[n]) for n in changed)


def test_frozen_prefix_keeps_no_autograd_graph() -> None:
    model = make(n_layers=3)
    model.set_trainable(1)
    seen: list[bool] = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    model(batch()[0])
    assert seen == [False, False, True]


def test_set_trainable_none_and_growth_keep_the_schedule() -> None:
    model = make(n_layers=2)
    model.set_trainable(1)
    model.grow()
    assert model.frozen_mask() == [True, True, False]  # the new top is the trainable one
    model.set_trainable(None)
    assert all(p.requires_grad for p in model.parameters())
    model.set_trainable(5)  # more than there are: all blocks, embeddings still frozen
    assert model.frozen_mask() == [False, False, False]
    assert not model.tok_emb.weight.requires_grad


def _uncached_logits(model: GrowingTransformer, idx: torch.Tensor) -> torch.Tensor:
    return model(idx[:, -model.config.seq_len :])[0][:, -1, :]


def test_kv_cache_matches_the_uncached_model_across_the_window() -> None:
    model = make(n_layers=2).eval()
    prompt = batch(B=2, T=5)[0]
    # Greedy: the cached generation must pick what the full recomputation picks, also after
    # the context outgrows seq_len (16) and gets cropped.
    out = model.generate(prompt, max_new_tokens=20, temperature=0)
    ref = prompt
    for _ in range(20):
        nxt = _uncached_logits(model, ref).argmax(-1, keepdim=True)
        ref = torch.cat((ref, nxt), 1)
    assert torch.equal(out, ref)


def test_cached_decoding_logits_match() -> None:
    model = make(n_layers=2).eval()
    idx = batch(B=2, T=12)[0]
    cache = KVCache(len(model.blocks))
    with torch.no_grad():
        model._logits(idx[:, :6], cache)
        for t in range(6, 12):
            step = model._logits(idx[:, t : t + 1], cache)[:, -1]
            full = model(idx[:, : t + 1])[0][:, -1]
            torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)


def test_sampling_is_seeded_and_top_k_restricts() -> None:
    model = make()
    prompt = batch(B=1, T=3)[0]

    def sample(seed: int, top_k: int | None = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return model.generate(prompt, 12, temperature=1.0, top_k=top_k, generator=g)

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))
    # top_k=1 is greedy whatever the seed.
    greedy = model.generate(prompt, 12, temperature=0)
    assert torch.equal(sample(1, top_k=1), greedy)
    assert torch.equal(sample(2, top_k=1), greedy)


def test_generate_stops_at_stop_token_and_restores_mode() -> None:
    model = make().train()
    prompt = batch(B=1, T=3)[0]
    first = model.generate(prompt, 1, temperature=0)[0, -1].item()
    out = model.generate(prompt, 10, temperature=0, stop_token=first)
    assert out.shape[1] == 4
    assert model.training


def test_param_count_and_flops() -> None:
    model = make(n_layers=2)
    d, f, V, T = CFG.d_model, CFG.d_ff, CFG.vocab_size, CFG.seq_len
    block = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
    expected = V * d + T * d + 2 * block + 2 * d + d * V
    assert model.num_params() == expected
    assert model.num_params(non_embedding=True) == expected - V * d - T * d
    model.set_trainable(1)
    assert model.num_params(trainable_only=True) == block + 2 * d + d * V
    n = expected - V * d - T * d
    assert model.flops_per_token() == 6 * n + 12 * 2 * d * T
    # The same numbers from the config alone (what `dte status` shows without loading).
    assert config_num_params(model.config) == expected
    assert config_num_params(model.config, non_embedding=True) == n
    assert config_flops_per_token(model.config) == model.flops_per_token()
    small = replace(PRESETS["small"], n_layers=12)
    assert 120e6 < config_num_params(small) < 170e6  # GPT-2 small's shape, untied head


def test_presets_and_config_validation() -> None:
    assert PRESETS["tiny"].d_model == 128 and PRESETS["tiny"].target_layers == 6
    assert PRESETS["small"].seq_len == 1024 and PRESETS["small"].target_layers == 24
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="exceeds seq_len"):
        make()(torch.zeros(1, 17, dtype=torch.long))
