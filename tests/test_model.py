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


def train_a_little(model: GrowingTransformer) -> None:
    """Three SGD steps on what trains, so the function is not the near-trivial init one."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        model(*batch())[1].backward()
        opt.step()


@pytest.mark.parametrize("n_layers", [1, 3])
def test_identity_growth_preserves_the_function(n_layers: int) -> None:
    model = make(n_layers=n_layers)
    # Train a little first so the function is not the near-trivial init one.
    train_a_little(model)
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


# --------------------------------------------------------------------------- presets, counts
def test_preset_sizes_at_target_depth() -> None:
    assert PRESETS["medium"].d_model == 1024 and PRESETS["medium"].n_heads == 16
    sizes = {name: config_num_params(cfg, n_layers="target") for name, cfg in PRESETS.items()}
    assert 2.4e8 < sizes["small"] < 2.6e8
    assert 3.5e8 < sizes["medium"] < 4.2e8  # GPT-2 medium's shape with an untied head
    assert 0.9e9 < sizes["large"] < 1.1e9
    for cfg in PRESETS.values():
        assert config_num_params(cfg, n_layers="target") == config_num_params(
            replace(cfg, n_layers=cfg.target_layers)
        )
        flops = config_flops_per_token(cfg, n_layers="target")
        assert flops > 6 * config_num_params(cfg, non_embedding=True, n_layers="target")


PRIOR = replace(CFG, cooc_rank=5, key_bias=True)


@pytest.mark.parametrize("cooc_rank,key_bias", [(0, False), (5, False), (0, True), (7, True)])
@pytest.mark.parametrize("n_layers", [1, 3])
def test_config_counts_match_a_built_model(cooc_rank: int, key_bias: bool, n_layers: int) -> None:
    # The large presets are too big to build in a test; the same formulas on small shapes.
    cfg = replace(CFG, cooc_rank=cooc_rank, key_bias=key_bias, n_layers=n_layers)
    model = GrowingTransformer(cfg)
    assert config_num_params(cfg) == model.num_params()
    assert config_num_params(cfg, non_embedding=True) == model.num_params(non_embedding=True)
    assert config_num_params(replace(cfg, n_layers=1), n_layers=n_layers) == model.num_params()
    target = GrowingTransformer(replace(cfg, n_layers=cfg.target_layers))
    assert config_num_params(cfg, n_layers="target") == target.num_params()
    width = CFG.d_model + CFG.n_heads * cfg.prior_columns  # q.k and att.v head dims, summed
    expected = 6 * model.num_params(non_embedding=True) + 12 * n_layers * width * CFG.seq_len
    assert model.flops_per_token() == config_flops_per_token(cfg) == expected


# --------------------------------------------------------------------------- attention priors
def prior_model(seed: int = 0, n_layers: int = 2) -> GrowingTransformer:
    """A model whose priors are switched on and non-trivial."""
    g = torch.Generator().manual_seed(seed)
    model = GrowingTransformer(replace(PRIOR, n_layers=n_layers), generator=g)
    V, r = PRIOR.vocab_size, PRIOR.cooc_rank
    model.set_cooc_factors(torch.randn(V, r, generator=g), torch.randn(V, r, generator=g))
    model.init_key_bias([3, 5, 7], 1.5)
    with torch.no_grad():
        for block in model.blocks:
            block.cooc_alpha.fill_(0.7)
            block.key_bias.add_(torch.randn(V, generator=g))
    return model


def test_prior_columns_equal_a_dense_additive_bias() -> None:
    model = prior_model()
    block = model.blocks[0]
    x, _ = batch()
    B, T = x.shape
    H, D = PRIOR.n_heads, PRIOR.d_model // PRIOR.n_heads
    h = torch.randn(B, T, PRIOR.d_model, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        fused = block.attn(block.ln1(h), block.prior(x, model._prior_base(x)))
        # Reference: softmax(q.k/sqrt(D) + alpha U_i.V_j + b_j, causal) v, with dense T x T.
        q, k, v = block.attn.qkv(block.ln1(h)).view(B, T, 3, H, D).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        U, Vf = model.cooc_u[x], model.cooc_v[x]
        bias = block.cooc_alpha * (U @ Vf.transpose(1, 2)) + block.key_bias[x][:, None, :]
        att = q @ k.transpose(-1, -2) / D**0.5 + bias[:, None]
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, PRIOR.d_model)
        ref = block.attn.proj(y)
        plain = block.attn(block.ln1(h))
    assert (fused - ref).abs().max().item() < 1e-5
    assert (plain - ref).abs().max().item() > 1e-3  # the prior really changed the attention
    assert PRIOR.prior_columns == 8  # rank 5 + key bias, padded to a multiple of 8


def test_priors_learn_and_start_neutral() -> None:
    model = GrowingTransformer(replace(PRIOR, n_layers=2))
    assert model.blocks[0].cooc_alpha.item() == pytest.approx(0.1)
    # Zero factors and zero key bias: the same function as a model without priors.
    plain = GrowingTransformer(replace(CFG, n_layers=2))
    plain.load_state_dict(model.state_dict(), strict=False)
    x, y = batch()
    torch.testing.assert_close(model(x)[0], plain(x)[0], atol=1e-6, rtol=0)
    model = prior_model()
    model(x, y)[1].backward()
    for block in model.blocks:
        assert block.cooc_alpha.grad.abs() > 0
        assert block.key_bias.grad.abs().sum() > 0
    assert model.cooc_u.grad is None and not model.cooc_u.requires_grad


def test_prior_buffers_travel_in_the_state_dict() -> None:
    model = prior_model()
    state = model.state_dict()
    assert {"cooc_u", "cooc_v", "key_bias_init", "blocks.0.cooc_alpha", "blocks.1.key_bias"} <= set(
        state
    )
    with torch.device("meta"):  # as load_checkpoint builds it
        loaded = GrowingTransformer(model.config)
    loaded.load_state_dict(state, strict=True, assign=True)
    x, _ = batch()
    assert torch.equal(loaded(x)[0], model(x)[0])
    with pytest.raises(ValueError, match="must be"):
        model.set_cooc_factors(torch.zeros(3, 5), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="must be"):
        model.set_cooc_factors(torch.zeros(97, 6), torch.zeros(97, 6))
    model.set_cooc_factors(torch.ones(97, 2), torch.ones(97, 2))  # fewer factors: rest zero
    assert model.cooc_u[:, :2].eq(1).all() and model.cooc_u[:, 2:].eq(0).all()
    with pytest.raises(ValueError, match="cooc_rank is 0"):
        make().set_cooc_factors(torch.zeros(97, 5), torch.zeros(97, 5))
    with pytest.raises(ValueError, match="no key bias"):
        make().init_key_bias([1], 0.5)


def test_init_key_bias_reaches_every_block_and_later_ones() -> None:
    model = GrowingTransformer(replace(PRIOR, n_layers=2))
    model.init_key_bias([4, 9], 0.25)
    model.grow("identity")
    model.grow("random", generator=torch.Generator().manual_seed(1), n=2)
    expected = torch.zeros(PRIOR.vocab_size)
    expected[[4, 9]] = 0.25
    assert torch.equal(model.key_bias_init, expected)
    for block in model.blocks:
        assert torch.equal(block.key_bias, expected)
        assert block.cooc_alpha.item() == pytest.approx(0.1)


@pytest.mark.parametrize("n", [1, 2])
def test_identity_growth_with_priors_preserves_the_function(n: int) -> None:
    model = prior_model(n_layers=2)
    model.set_trainable(1)
    train_a_little(model)
    x, _ = batch(seed=5)
    with torch.no_grad():
        before, _ = model(x)
        top = model.grow("identity", n=n)
        after, _ = model(x)
    assert top is model.blocks[-1]
    assert len(model.blocks) == model.config.n_layers == 2 + n
    assert model.frozen_mask() == [True] * (1 + n) + [False]
    assert (after - before).abs().max().item() < 1e-6


def test_grow_n_blocks_at_once() -> None:
    model = make(n_layers=1)
    x, _ = batch()
    with torch.no_grad():
        before = model(x)[0]
        model.grow("identity", n=2)
        assert (model(x)[0] - before).abs().max().item() < 1e-6
    assert len(model.blocks) == 3
    model.grow("copy", n=2)
    assert all(
        torch.equal(model.blocks[4].mlp.fc.weight, model.blocks[i].mlp.fc.weight) for i in (2, 3)
    )
    with pytest.raises(ValueError, match="n >= 1"):
        model.grow(n=0)


def test_kv_cache_with_priors_matches_the_uncached_model() -> None:
    model = prior_model(n_layers=2).eval()
    idx = batch(B=2, T=12)[0]
    idx[:, ::3] = 5  # a key-biased token
    cache = KVCache(len(model.blocks))
    with torch.no_grad():
        model._logits(idx[:, :6], cache)
        for t in range(6, 12):
            step = model._logits(idx[:, t : t + 1], cache)[:, -1]
            full = model(idx[:, : t + 1])[0][:, -1]
            torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)
    out = model.generate(idx[:, :5], max_new_tokens=20, temperature=0)
    ref = idx[:, :5]
    for _ in range(20):
        ref = torch.cat((ref, _uncached_logits(model, ref).argmax(-1, keepdim=True)), 1)
    assert torch.equal(out, ref)


# --------------------------------------------------------------------------- hidden, prefix
def test_return_hidden_is_the_final_norm_output() -> None:
    model = make(n_layers=2)
    x, y = batch()
    logits, loss, hidden = model(x, y, return_hidden=True)
    assert hidden.shape == (3, 16, CFG.d_model)
    torch.testing.assert_close(model.head(hidden), logits)
    assert loss is not None and hidden.requires_grad
    assert len(model(x, y)) == 2


@pytest.mark.parametrize("priors", [False, True])
@pytest.mark.parametrize("n_trainable", [1, 2, 3])
def test_cached_prefix_gives_the_same_loss_and_grads(priors: bool, n_trainable: int) -> None:
    model = prior_model(n_layers=3) if priors else make(n_layers=3)
    model.set_trainable(n_trainable)
    x, y = batch()
    _, loss = model(x, y)
    loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)

    prefix = model.frozen_prefix(x)
    assert not prefix.requires_grad
    _, cached = model(x, y, prefix_hidden=prefix)
    cached.backward()
    assert abs(cached.item() - loss.item()) < 1e-6
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, ref[n], atol=1e-6, rtol=0)
        else:
            assert p.grad is None, n


def test_prefix_hidden_is_checked() -> None:
    model = make(n_layers=2)
    x, _ = batch()
    with pytest.raises(ValueError, match="nothing is frozen"):
        model.frozen_prefix(x)
    with pytest.raises(ValueError, match="needs a frozen prefix"):
        model(x, prefix_hidden=torch.zeros(3, 16, CFG.d_model))
    model.set_trainable(1)
    with pytest.raises(ValueError, match="does not fit"):
        model(x, prefix_hidden=torch.zeros(3, 15, CFG.d_model))


def test_priors_under_bf16_autocast() -> None:
    # On CUDA the trainer runs under bf16 autocast: the fp32 prior columns must follow q/k.
    model = prior_model()
    x, y = batch()
    ref, _ = model(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(x, y)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    assert (logits.float() - ref).abs().max().item() < 0.1
    loss.backward()
    assert model.blocks[0].cooc_alpha.grad is not None


def _attention_kernels(model: GrowingTransformer) -> set[str]:
    with torch.profiler.profile() as prof, torch.no_grad():
        model(batch()[0])
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}


def test_priors_keep_the_fused_attention_kernel() -> None:
    # Why the value is zero-padded: a narrower value would send SDPA to its dense math path.
    plain = _attention_kernels(make(n_layers=1))
    with_priors = _attention_kernels(prior_model(n_layers=1))
    assert with_priors == plain
    assert not any("math" in k for k in plain), plain
