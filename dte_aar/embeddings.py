"""Identity-embedded initialisation: Word2Vec token embeddings and a co-occurrence prior.

Both read token-id sequences from the arena, so the first layer starts with the identity's
words already arranged by the company they keep (DESIGN.md §4). Everything here runs on CPU
once per workspace and returns float32 tensors the trainer copies into the model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import eigsh

# gensim silently truncates longer sentences, so long sequences are fed in pieces of this size.
W2V_MAX_SENTENCE = 10_000
# Up to this many tokens in use, the co-occurrence matrix is small enough to decompose densely.
DENSE_MAX_VOCAB = 1024
# Pairs gathered before they are folded into the sparse counts: bounds the temporary memory.
_PAIRS_PER_CHUNK = 2_000_000
# Relative eigenvalue accuracy: ample for an attention prior, and on a flat spectrum (uniform
# random tokens) it converges in seconds where machine precision takes tens of seconds.
_EIG_TOL = 1e-6


def _ids(seq: Sequence[int], vocab_size: int) -> np.ndarray:
    a = np.asarray(seq, dtype=np.int64).reshape(-1)
    if a.size and (a.min() < 0 or a.max() >= vocab_size):
        raise ValueError(f"token id out of range for vocab_size {vocab_size}")
    return a


def word2vec_embeddings(
    sequences: Iterable[Sequence[int]],
    vocab_size: int,
    dim: int,
    seed: int,
    window: int = 10,
    min_count: int = 2,
    workers: int | None = None,
    init_std: float = 0.02,
) -> torch.Tensor:
    """Skip-gram Word2Vec vectors for token ids, as a ``[vocab_size, dim]`` float32 embedding.

    Learned vectors are centred and rescaled to std ``init_std``: raw Word2Vec norms are far
    above a transformer's init scale and slow early training. Tokens seen fewer than
    ``min_count`` times get N(0, (0.1 * init_std)^2) from a generator seeded with ``seed``, so
    they start near zero instead of pretending to a meaning. gensim is only reproducible with
    ``workers=1`` (its threads race; single-threaded runs match across processes); the default
    uses every CPU and trades that for speed. Sequences longer than gensim's 10,000-word cap
    are fed in pieces, so a packed token stream can be passed whole.
    """
    from gensim.models import Word2Vec  # slow to import; only the trainer's first cycle needs it

    g = torch.Generator().manual_seed(seed)
    out = torch.randn(vocab_size, dim, generator=g) * (0.1 * init_std)
    words = [str(i) for i in range(vocab_size)]  # shared strings: a list costs 8 bytes a token
    sentences: list[list[str]] = []
    for seq in sequences:
        ids = _ids(seq, vocab_size).tolist()
        for s in range(0, len(ids), W2V_MAX_SENTENCE):
            sentences.append([words[i] for i in ids[s : s + W2V_MAX_SENTENCE]])
    model = Word2Vec(
        vector_size=dim,
        window=window,
        min_count=min_count,
        sg=1,
        seed=seed,
        workers=workers or os.cpu_count() or 1,
    )
    model.build_vocab(sentences)
    if not model.wv.index_to_key:  # nothing reached min_count
        return out
    model.train(sentences, total_examples=model.corpus_count, epochs=model.epochs)
    seen = torch.tensor([int(w) for w in model.wv.index_to_key])
    learned = torch.from_numpy(model.wv.vectors.astype(np.float64))
    learned -= learned.mean(dim=0)
    std = learned.std()
    if std > 0:
        learned *= init_std / std
    out[seen] = learned.float()
    return out


def _pairs(
    sequences: Iterable[Sequence[int]], vocab_size: int, window: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, cols) arrays of the pairs (tok[p], tok[p + d]) for 0 < d <= window, in chunks."""
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    pending = 0
    block = max(1, _PAIRS_PER_CHUNK // window)  # positions of a long sequence taken at a time
    for seq in sequences:
        a = _ids(seq, vocab_size).astype(np.int32)
        n = len(a)
        for s in range(0, n, block):
            e = min(s + block, n)
            for d in range(1, window + 1):
                stop = min(e, n - d)
                if stop <= s:
                    break
                rows.append(a[s:stop])
                cols.append(a[s + d : stop + d])
                pending += stop - s
            if pending >= _PAIRS_PER_CHUNK:
                yield np.concatenate(rows), np.concatenate(cols)
                rows, cols, pending = [], [], 0
    if pending:
        yield np.concatenate(rows), np.concatenate(cols)


def cooccurrence_matrix(
    sequences: Iterable[Sequence[int]], vocab_size: int, window: int = 5
) -> sp.csr_matrix:
    """Symmetric counts C[i, j] of ordered position pairs 0 < |p - q| <= window, per sequence.

    Sparse throughout: each chunk of pairs becomes a COO matrix whose duplicates CSR sums, so
    memory is O(nnz + one chunk), never V x V.
    """
    if window < 1:
        raise ValueError(f"window {window} must be at least 1")
    shape = (vocab_size, vocab_size)
    counts = sp.csr_matrix(shape, dtype=np.float64)
    for r, c in _pairs(sequences, vocab_size, window):
        counts = counts + sp.coo_matrix((np.ones(len(r)), (r, c)), shape=shape).tocsr()
    return (counts + counts.T).tocsr()


def cooccurrence_factors(
    sequences: Iterable[Sequence[int]],
    vocab_size: int,
    rank: int,
    window: int = 5,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors U, V ([vocab_size, rank], float32) with ``U @ V.T`` the best rank-r log1p(C).

    C is the windowed co-occurrence matrix; log1p tames its heavy tail. C is symmetric, so its
    truncated SVD is its top-|eigenvalue| eigendecomposition Q diag(l) Q^T: U = Q sqrt|l| and
    V = U sign(l). ``eigsh`` finds that with half the sparse products ``svds`` needs (4x faster
    on stdlib tokens); up to ``DENSE_MAX_VOCAB`` tokens in use are decomposed densely instead.
    The start vector comes from ``seed`` and column signs are fixed, so the result is
    deterministic. Columns past the number of tokens in use are zero.
    """
    if rank < 0:
        raise ValueError(f"rank {rank} is negative")
    logc = cooccurrence_matrix(sequences, vocab_size, window)
    logc.data = np.log1p(logc.data)
    # Tokens that never occur have zero rows and zero factors: decompose only the rest.
    used = np.flatnonzero(logc.getnnz(axis=1))
    sub = logc[used][:, used]
    n = len(used)
    k = min(rank, n)
    if k == 0:
        lam, q = np.zeros(0), np.zeros((n, 0))
    elif n <= DENSE_MAX_VOCAB or k >= n - 1:
        lam, q = np.linalg.eigh(sub.toarray())
    else:
        v0 = np.random.default_rng(seed).standard_normal(n)
        ncv = min(n, max(4 * k, 20))  # a wider Krylov basis converges far sooner
        lam, q = eigsh(sub, k=k, which="LM", v0=v0, ncv=ncv, tol=_EIG_TOL)
    top = np.argsort(-np.abs(lam), kind="stable")[:k]
    lam, q = lam[top], q[:, top]
    flip = np.sign(q[np.abs(q).argmax(axis=0), np.arange(k)]) if n else np.ones(k)
    q = q * np.where(flip == 0, 1.0, flip)
    u = np.zeros((vocab_size, rank), dtype=np.float32)
    v = np.zeros((vocab_size, rank), dtype=np.float32)
    u[used, :k] = q * np.sqrt(np.abs(lam))
    v[used, :k] = u[used, :k] * np.sign(lam)
    return torch.from_numpy(u), torch.from_numpy(v)


def attention_prior_logits(u: torch.Tensor, v: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``[T, T]`` prior ``U[ids] @ V[ids].T`` of one sequence; the model adds alpha times it."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    return u[ids] @ v[ids].T
