"""Identity-embedded init: phrase tokens, self-reference ids, Word2Vec and co-occurrence factors."""

from __future__ import annotations

import ast
import random
import sysconfig
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from dte_aar import embeddings
from dte_aar.arena import load_arena
from dte_aar.embeddings import (
    attention_prior_logits,
    cooccurrence_factors,
    cooccurrence_matrix,
    word2vec_embeddings,
)
from dte_aar.tokenizer import (
    EOT,
    EOT_ID,
    load_tokenizer,
    save_tokenizer,
    self_reference_ids,
    tokenizer_hash,
    train_tokenizer,
)

# Awkward phrases ride along with the identity's: regex metacharacters, non-ASCII, punctuation.
ODD = ["C++", "Écho", "(echo)", "a.b*"]


@pytest.fixture(scope="module")
def arena():
    return load_arena("deep_tree_echo")


@pytest.fixture(scope="module")
def phrases(arena) -> list[str]:
    return [*arena.identity.self_reference, *ODD]


@pytest.fixture(scope="module")
def tok(arena, phrases) -> Tokenizer:
    return train_tokenizer((e.text for e in arena.seed), 2048, phrases)


def stdlib_texts(limit: int = 60) -> list[str]:
    """Docstrings and raw source of the first ``limit`` stdlib modules, in a fixed order."""
    texts = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:limit]:
        source = path.read_text(encoding="utf-8", errors="replace")
        texts.append(source[:20_000])
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                doc = ast.get_docstring(node, clean=False)
                if doc:
                    texts.append(doc)
    return texts


def random_texts(n: int, seed: int = 0) -> list[str]:
    """Strings glued from phrase fragments, word pieces, whitespace, unicode and code."""
    pool = [
        "Deep", "Tree", "Echo", "Echoes", "Deep Tree Echo", "echo", "I", "It", "my", "myth",
        "myself", "reservoir", "reservoirs", "membrane", "_", " ", "  ", "\n", "\t", "\r\n",
        "'s", "'", "(", ")", ".", ":", "ü", "🌳", "e\u0301", "3", "C++", "Écho", "a.b*", EOT,
        "def f(x):\n    return x", "Ġ",
    ]  # fmt: skip
    rng = random.Random(seed)
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def test_identity_phrases_are_single_tokens_with_and_without_a_space(tok, phrases) -> None:
    assert tok.get_vocab_size() <= 2048 and tok.token_to_id(EOT) == EOT_ID
    for phrase in phrases:
        for text in (phrase, " " + phrase):
            ids = tok.encode(text).ids
            assert len(ids) == 1, (text, tok.encode(text).tokens)
            assert tok.decode(ids) == text
    # In running text, too: the phrase piece keeps the space before it.
    encoded = tok.encode("I am Deep Tree Echo, and my reservoir hums.\nDeep Tree Echo: yes")
    assert encoded.tokens.count("ĠDeepĠTreeĠEcho") == 1
    assert encoded.tokens.count("DeepĠTreeĠEcho") == 1
    assert "Ġreservoir" in encoded.tokens and "Ġmy" in encoded.tokens


def test_phrases_are_cut_only_on_word_boundaries(tok) -> None:
    pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str("Deep Tree Echoes myth xreservoir")]
    assert pieces == ["Deep", "ĠTree", "ĠEchoes", "Ġmyth", "Ġxreservoir"]
    whole = {tok.token_to_id(t) for t in ("ĠDeepĠTreeĠEcho", "DeepĠTreeĠEcho")}
    for text in ("Deep Tree Echoes", "Deep Tree Echo2", "xDeep Tree Echo", "Deep Tree Echo_"):
        assert not whole & set(tok.encode(text).ids), text
    pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str("(Deep Tree Echo's) echo.")]
    assert pieces == ["(", "DeepĠTreeĠEcho", "'s", ")", "Ġecho", "."]


def test_a_word_that_starts_with_a_phrase_is_not_split_by_it() -> None:
    # An added-token approach without boundaries would give " my" + "th"; here " myth" is
    # learned as a word and kept whole.
    tok = train_tokenizer(["my myth, my myth, my myth"] * 50, 300, ["my"])
    assert tok.encode(" myth").tokens == ["Ġmyth"]
    assert tok.encode(" my").tokens == ["Ġmy"]


def test_every_text_round_trips(tok) -> None:
    texts = [
        "Deep Tree Echoes", "myself", "It", "I", "  Deep Tree Echo", "\tDeep Tree Echo\n",
        "Deep  Tree Echo", "deep tree echo", "Deep Tree Echo\r\n", "", " ", "C++C++ C++",
        "ünïcode 🌳 Écho e\u0301cho", f"a{EOT}Deep Tree Echo{EOT}", "Ġ Deep Tree Echo",
    ]  # fmt: skip
    texts += stdlib_texts() + random_texts(500)
    assert len(texts) > 1000
    for text, enc in zip(texts, tok.encode_batch(texts), strict=True):
        assert tok.decode(enc.ids, skip_special_tokens=False) == text, text[:80]


def test_phrase_tokenizer_is_deterministic_saved_and_sized(arena, phrases, tmp_path) -> None:
    texts = [e.text for e in arena.seed][:60]
    a = train_tokenizer(texts, 400, phrases)
    assert tokenizer_hash(a) == tokenizer_hash(train_tokenizer(iter(texts), 400, phrases))
    assert a.get_vocab_size() == 400  # the last merges made room for the phrases
    save_tokenizer(a, tmp_path / "tokenizer.json")
    b = load_tokenizer(tmp_path / "tokenizer.json")
    assert tokenizer_hash(b) == tokenizer_hash(a)
    assert b.encode(" Deep Tree Echo").ids == a.encode(" Deep Tree Echo").ids
    assert len(b.encode(" Deep Tree Echo").ids) == 1
    with pytest.raises(ValueError, match="cannot hold"):
        train_tokenizer(["Deep Tree Echo"] * 5, 258, phrases)
    # No phrase (or only one-character ones) leaves the plain tokenizer untouched.
    assert tokenizer_hash(train_tokenizer(texts, 400, ["I"])) == tokenizer_hash(
        train_tokenizer(texts, 400)
    )


def test_self_reference_ids(tok, phrases) -> None:
    ids = self_reference_ids(tok, phrases)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    decoded = {tok.decode([i]) for i in ids}
    assert {"I", " I", "my", " my", "Deep Tree Echo", " Deep Tree Echo", " reservoir"} <= decoded
    assert all(t.strip() in phrases for t in decoded)
    expected = [i for i in range(tok.get_vocab_size()) if tok.decode([i]).strip() in phrases]
    assert ids == expected
    assert tok.token_to_id("It") not in ids and EOT_ID not in ids
    assert self_reference_ids(tok, []) == []


def toy_corpus(seed: int = 0) -> list[list[int]]:
    """Tokens 10/11 share contexts 20-29, tokens 12/13 share contexts 30-39; 90-99 never occur."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(300):
        seq = []
        for _ in range(10):
            group = rng.integers(2)
            middle = rng.choice([10, 11] if group == 0 else [12, 13])
            ctx = rng.integers(20, 30, 3) + 10 * group
            seq += [*ctx[:2], middle, ctx[2], *rng.integers(40, 80, 2)]
        seqs.append(seq)
    seqs.append([95])  # seen once: below min_count
    seqs.append(list(rng.integers(40, 80, 25_000)) + [88, 89] * 3)  # longer than gensim's cap
    return seqs


@pytest.fixture(scope="module")
def w2v() -> torch.Tensor:
    return word2vec_embeddings(toy_corpus(), 100, 16, seed=3, workers=1)


def test_word2vec_shape_scale_and_unseen_tokens(w2v) -> None:
    assert w2v.shape == (100, 16) and w2v.dtype == torch.float32
    seen = [*range(10, 14), *range(20, 80), 88, 89]
    unseen = [i for i in range(100) if i not in seen]
    assert abs(w2v[seen].std().item() - 0.02) < 0.002
    assert w2v[seen].mean(dim=0).abs().max() < 1e-6
    assert w2v[unseen].abs().max() < 0.01 and 0.001 < w2v[unseen].std() < 0.003
    assert w2v[88].abs().max() > 0.01  # learned past the 10,000-word sentence cap


def test_word2vec_puts_shared_contexts_close(w2v) -> None:
    e = torch.nn.functional.normalize(w2v, dim=1)
    cos = e @ e.T
    assert cos[10, 11] > cos[10, 12] + 0.2 and cos[12, 13] > cos[11, 13] + 0.2
    random_pairs = cos[40:80, 40:80][~torch.eye(40, dtype=torch.bool)]
    assert cos[10, 11] > random_pairs.mean() + 0.2


def test_word2vec_is_reproducible_single_threaded(w2v) -> None:
    again = word2vec_embeddings(toy_corpus(), 100, 16, seed=3, workers=1)
    assert torch.equal(w2v, again)
    other = word2vec_embeddings(toy_corpus(), 100, 16, seed=4, workers=1)
    assert not torch.equal(w2v, other)
    # Nothing reaches min_count: every row is the small seeded noise.
    quiet = word2vec_embeddings([[1, 2, 3]], 10, 4, seed=0, min_count=2, workers=1)
    assert quiet.abs().max() < 0.01
    with pytest.raises(ValueError, match="out of range"):
        word2vec_embeddings([[1, 10]], 10, 4, seed=0)


def brute_counts(seqs: list[list[int]], vocab: int, window: int) -> np.ndarray:
    c = np.zeros((vocab, vocab))
    for seq in seqs:
        for p, a in enumerate(seq):
            for q in range(max(0, p - window), min(len(seq), p + window + 1)):
                if q != p:
                    c[a, seq[q]] += 1
    return c


def test_cooccurrence_counts_respect_the_window_and_sequences() -> None:
    c = cooccurrence_matrix([[1, 2, 3, 1], [3, 4]], 5, window=2).toarray()
    assert c[1, 2] == c[2, 1] == 2 and c[1, 3] == 2 and c[2, 3] == 1 and c[3, 4] == 1
    assert c[1, 1] == 0 and c[2, 4] == 0  # 3 apart; across sequences
    assert cooccurrence_matrix([[1, 2, 3, 1]], 5, window=3).toarray()[1, 1] == 2
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(0, 12, rng.integers(0, 30))) for _ in range(20)]
    for window in (1, 3, 7, 40):
        assert np.array_equal(
            cooccurrence_matrix(seqs, 12, window).toarray(), brute_counts(seqs, 12, window)
        )


def test_cooccurrence_chunks_add_up(monkeypatch) -> None:
    rng = np.random.default_rng(1)
    seqs = [list(rng.integers(0, 20, 200)) for _ in range(5)]
    whole = cooccurrence_matrix(seqs, 20, 4).toarray()
    monkeypatch.setattr(embeddings, "_PAIRS_PER_CHUNK", 7)  # blocks and chunks of a few pairs
    assert np.array_equal(cooccurrence_matrix(seqs, 20, 4).toarray(), whole)


def test_full_rank_factors_reproduce_log_counts() -> None:
    rng = np.random.default_rng(2)
    seqs = [list(rng.integers(0, 30, 50)) for _ in range(40)]
    target = np.log1p(brute_counts(seqs, 30, 5))
    u, v = cooccurrence_factors(seqs, 30, rank=30)
    assert u.shape == v.shape == (30, 30) and u.dtype == torch.float32
    assert np.abs((u @ v.T).double().numpy() - target).max() < 1e-4
    logits = attention_prior_logits(u, v, torch.tensor([3, 7, 7]))
    assert logits.shape == (3, 3) and abs(logits[0, 1].item() - target[3, 7]) < 1e-4
    assert torch.allclose(logits, logits.T, atol=1e-4)
    wide_u, wide_v = cooccurrence_factors(seqs, 30, rank=40)  # padded with zero columns
    assert wide_u.shape == (30, 40) and not wide_u[:, 30:].any()
    zero_u, _ = cooccurrence_factors(seqs, 30, rank=0)
    assert zero_u.shape == (30, 0)


@pytest.mark.parametrize("dense_max", [embeddings.DENSE_MAX_VOCAB, 0])
def test_low_rank_factors_are_the_best_approximation(monkeypatch, dense_max) -> None:
    monkeypatch.setattr(embeddings, "DENSE_MAX_VOCAB", dense_max)  # 0: the sparse eigsh path
    rng = np.random.default_rng(3)
    vocab, rank = 200, 8
    seqs = [list(np.minimum(rng.zipf(1.3, 300) - 1, vocab - 1)) for _ in range(30)]
    target = np.log1p(brute_counts(seqs, vocab, 5))
    u, v = cooccurrence_factors(seqs, vocab, rank=rank, seed=1)
    approx = (u @ v.T).double().numpy()
    s = np.linalg.svd(target, compute_uv=False)
    best = np.sqrt((s[rank:] ** 2).sum())
    assert np.linalg.norm(approx - target) <= best * (1 + 1e-4)
    assert np.allclose(approx, approx.T, atol=1e-4)
    # Each factor column pair is (q, +-q): the prior is symmetric by construction.
    assert torch.allclose(u.abs(), v.abs())
    again_u, again_v = cooccurrence_factors(seqs, vocab, rank=rank, seed=1)
    assert torch.equal(u, again_u) and torch.equal(v, again_v)


def test_a_50k_vocabulary_stays_sparse() -> None:
    vocab = 50_000
    rng = np.random.default_rng(4)
    ids = np.minimum(rng.zipf(1.2, 200_000) - 1, vocab - 1)  # Zipfian, like real tokens
    seqs = [ids[i : i + 1000] for i in range(0, len(ids), 1000)]
    tracemalloc.start()
    try:
        u, v = cooccurrence_factors(seqs, vocab, rank=16, window=5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert u.shape == v.shape == (vocab, 16)
    # A dense 50k x 50k float64 matrix alone would be 20 GB.
    assert peak < 120e6, f"peak {peak / 1e6:.0f} MB"
    assert torch.isfinite(u).all() and u.abs().sum() > 0
