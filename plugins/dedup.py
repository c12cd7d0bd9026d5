"""Built-in `dedup` curator: exact and near duplicates against the whole corpus, seed included.

Exact: the whitespace-normalised, case-folded text hash stored with every sample, one
indexed lookup; a sample is a duplicate when an earlier sample with the same key is
accepted or still pending.

Near: MinHash signatures (datasketch, 128 permutations over 5-word shingles) in an LSH
index (banding tuned for 95% recall at the threshold, kept in sorted numpy arrays: see
`BandIndex`). The index holds the accepted corpus plus this cycle's earlier kept samples;
a candidate counts when its estimated Jaccard similarity reaches `threshold` (0.75: a
sentence or two reworded in a paragraph). Each kept sample's signature goes into the
`minhashes` table, so a restarted curator rebuilds the index from SQLite without rehashing
the corpus; only accepted samples without a stored signature (the seed on the first run,
imports) are hashed. Signatures of samples that were later rejected are dropped on the
next call.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from dte_aar.hookspecs import CycleContext, PluginConfig, Sample, Verdict, hookimpl
from dte_aar.store import Store

if TYPE_CHECKING:
    from datasketch import MinHash

SHINGLE_WORDS = 5
MINHASH_SEED = 1  # part of what a stored signature means: changing it invalidates the table
SCHEME = "affine32"  # datasketch >= 2: uint32 hash values, 4 bytes per permutation
TOKEN = re.compile(r"\w+")
FLUSH_EVERY = 256
CHUNK = 500  # samples per exact-duplicate query
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd: the polynomial keeps every bit in play
_BAND_SALT = np.uint64(0xD6E8FEB86659FD93)


class DedupConfig(PluginConfig):
    near: bool = Field(True, description="also reject MinHash near-duplicates")
    threshold: float = Field(0.75, ge=0.1, le=0.95, description="estimated Jaccard that counts")
    num_perm: int = Field(128, ge=64, le=1024, description="MinHash permutations")


def _identity(value: int) -> int:
    return value


_TEMPLATES: dict[int, MinHash] = {}


def _template(num_perm: int) -> MinHash:
    """An empty MinHash whose permutations every signature shares (made once per size)."""
    if num_perm not in _TEMPLATES:
        from datasketch import MinHash  # ~1 s to import: only once a curator runs

        _TEMPLATES[num_perm] = MinHash(
            num_perm, seed=MINHASH_SEED, hashfunc=_identity, scheme=SCHEME
        )
    return _TEMPLATES[num_perm]


def shingles(text: str, n: int = SHINGLE_WORDS) -> np.ndarray:
    """A 32-bit hash of each run of ``n`` lower-cased words (the whole text when shorter).

    Words are hashed with crc32, not ``hash()``: signatures are stored, so they must not
    change between processes. The n word hashes of a shingle are combined by a polynomial
    in uint64 arithmetic (vectorised: no string is built per shingle), folded to 32 bits;
    datasketch mixes each value with MurmurHash3's finaliser before permuting it.
    """
    words = np.fromiter(
        (zlib.crc32(w.encode()) for w in TOKEN.findall(text.lower())), dtype=np.uint64
    )
    if len(words) < n:  # one shingle: the whole (short) text
        words = np.concatenate([words, np.zeros(n - len(words), dtype=np.uint64)])
    h = np.zeros(len(words) - n + 1, dtype=np.uint64)
    for k in range(n):
        h = h * _MULTIPLIER + words[k : len(words) - n + 1 + k]
    return (h ^ (h >> np.uint64(32))) & np.uint64(0xFFFFFFFF)


def signature(text: str, num_perm: int = 128) -> np.ndarray:
    """The MinHash signature of ``text`` (datasketch, affine32): ``num_perm`` uint32 values."""
    m = _template(num_perm).copy()
    m.update_batch(shingles(text).tolist())
    return m.hashvalues.astype(np.uint32)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Estimated Jaccard similarity: the share of permutations whose minima agree."""
    return float(np.count_nonzero(a == b)) / len(a)


def lsh_params(threshold: float, num_perm: int, recall: float = 0.95) -> tuple[int, int]:
    """Bands and rows so a pair right at ``threshold`` becomes a candidate with ``recall``.

    datasketch's default weighs false positives and false negatives alike and, at 0.75 with
    128 permutations, misses 62% of the pairs right at the threshold. False positives only
    cost one signature comparison here, so take the longest rows that still reach
    ``recall`` (longer rows: fewer unrelated candidates).
    """
    best = (num_perm, 1)
    for r in range(1, num_perm // 2 + 1):
        b = num_perm // r
        if 1 - (1 - threshold**r) ** b >= recall:
            best = (b, r)
    return best


class BandIndex:
    """LSH banding, as datasketch's MinHashLSH does it, over sorted numpy arrays.

    Two signatures are candidates when all ``rows`` values of some band agree. MinHashLSH's
    in-memory storage keeps a Python set per bucket: ~9 KB a sample at 21 bands, 0.9 GB and
    15 s to rebuild for 100k samples. Here a sample costs 16 bytes a band (key and id) and a
    rebuild is a sort. New keys wait in a dict and are merged into the arrays in batches.
    """

    MERGE_AT = 1 << 16  # pending keys

    def __init__(self, bands: int, rows: int) -> None:
        self.bands, self.rows = bands, rows
        self.keys = np.empty(0, dtype=np.uint64)  # sorted
        self.ids = np.empty(0, dtype=np.int64)
        self.pending: dict[int, list[int]] = {}
        self.dead: set[int] = set()
        self._salt = np.arange(1, bands + 1, dtype=np.uint64) * _BAND_SALT
        # M^(rows-1-j): a band's key is the polynomial of its values (uint64, wrapping)
        m = int(_MULTIPLIER)
        self._powers = np.array([pow(m, rows - 1 - j, 1 << 64) for j in range(rows)], np.uint64)

    def band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """[n, num_perm] signatures -> [n, bands] keys; a band's number is mixed into its key
        so one sorted array serves every band."""
        used = sigs[:, : self.bands * self.rows].astype(np.uint64)
        parts = used.reshape(len(sigs), self.bands, self.rows)
        return (parts * self._powers).sum(axis=2, dtype=np.uint64) ^ self._salt

    def add_many(self, ids: np.ndarray, sigs: np.ndarray) -> None:
        self._merge(self.band_keys(sigs).ravel(), np.repeat(ids.astype(np.int64), self.bands))
        self.dead.difference_update(ids.tolist())

    def add(self, sample_id: int, keys: np.ndarray) -> None:
        """Index one sample by its band keys (``band_keys(sig[None])[0]``)."""
        for key in keys.tolist():
            self.pending.setdefault(key, []).append(sample_id)
        self.dead.discard(sample_id)
        if len(self.pending) >= self.MERGE_AT:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            keys = [k for k, ids in self.pending.items() for _ in ids]
            ids = [i for ids in self.pending.values() for i in ids]
            self.pending = {}
            self._merge(np.array(keys, dtype=np.uint64), np.array(ids, dtype=np.int64))

    def _merge(self, keys: np.ndarray, ids: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")
        keys, ids = keys[order], ids[order]
        at = np.searchsorted(self.keys, keys)
        self.keys, self.ids = np.insert(self.keys, at, keys), np.insert(self.ids, at, ids)

    def remove(self, sample_id: int) -> None:
        self.dead.add(sample_id)  # its keys stay until the next rebuild; queries skip it

    def query(self, keys: np.ndarray) -> set[int]:
        """Ids of the samples sharing a band key with ``keys`` (removed ones left out)."""
        found: set[int] = set()
        if len(self.keys):
            lo = np.searchsorted(self.keys, keys)
            hit = self.keys[np.minimum(lo, len(self.keys) - 1)] == keys
            if hit.any():
                hi = np.searchsorted(self.keys, keys[hit], "right")
                for a, b in zip(lo[hit].tolist(), hi.tolist(), strict=True):
                    found.update(self.ids[a:b].tolist())
        if self.pending:
            for key in keys.tolist():
                found.update(self.pending.get(key, ()))
        return found - self.dead if self.dead else found


class NearIndex:
    """The near-duplicate index of one workspace, mirrored in the `minhashes` table."""

    def __init__(self, path: Path, threshold: float, num_perm: int) -> None:
        self.path, self.threshold, self.num_perm = path, threshold, num_perm
        self.bands = BandIndex(*lsh_params(threshold, num_perm))
        self.sigs: dict[int, np.ndarray] = {}
        self.hashed = 0  # texts hashed to fill the index (the rest came from SQLite)

    def keys(self, sig: np.ndarray) -> np.ndarray:
        return self.bands.band_keys(sig[None, :])[0]

    def add(self, sample_id: int, sig: np.ndarray, keys: np.ndarray | None = None) -> bytes:
        self.bands.add(sample_id, self.keys(sig) if keys is None else keys)
        self.sigs[sample_id] = sig
        return sig.tobytes()

    def remove(self, sample_id: int) -> None:
        if self.sigs.pop(sample_id, None) is not None:
            self.bands.remove(sample_id)

    def nearest(
        self, sig: np.ndarray, before: int, keys: np.ndarray | None = None
    ) -> tuple[int, float] | None:
        """The most similar indexed sample older than ``before`` at or over the threshold."""
        best: tuple[int, float] | None = None
        for key in self.bands.query(self.keys(sig) if keys is None else keys):
            if key >= before:  # itself after a crash, or a later sample: not "earlier"
                continue
            sim = jaccard(sig, self.sigs[key])
            if sim >= self.threshold and (best is None or sim > best[1]):
                best = (key, sim)
        return best

    def load(self, rows: list[tuple[int, bytes]]) -> None:
        """Stored signatures into the index, all at once."""
        if not rows:
            return
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        sigs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.uint32)
        sigs = sigs.reshape(len(rows), self.num_perm)
        self.bands.add_many(ids, sigs)
        self.sigs.update(zip(ids.tolist(), sigs, strict=True))

    def sync(self, store: Store) -> None:
        """Catch up with SQLite: drop rejected samples, load stored signatures, hash the rest."""
        db = store.db
        gone = [
            r[0]
            for r in db.execute(
                "select m.sample_id from minhashes m join samples s on s.id = m.sample_id "
                "where s.status = 'rejected'"
            )
        ]
        if gone:
            with db.conn:
                db.conn.executemany(
                    "delete from minhashes where sample_id = ?", [[i] for i in gone]
                )
            for sample_id in gone:
                self.remove(sample_id)
        select = "select sample_id, signature from minhashes where num_perm = ?"
        count = "select count(*) from minhashes where num_perm = ?"
        if db.execute(count, [self.num_perm]).fetchone()[0] != len(self.sigs):
            stored = db.execute(
                "select sample_id from minhashes where num_perm = ?", [self.num_perm]
            )
            missing = [r[0] for r in stored if r[0] not in self.sigs]
            if len(missing) > 1000:  # a restart: one pass over the table
                rows = db.execute(select, [self.num_perm])
                self.load([r for r in rows if r[0] not in self.sigs])
            else:
                for start in range(0, len(missing), 500):
                    part = missing[start : start + 500]
                    marks = ",".join("?" * len(part))
                    query = f"{select} and sample_id in ({marks})"
                    self.load(db.execute(query, [self.num_perm, *part]).fetchall())
        # Accepted (or kept by us and still pending) but never hashed at this size.
        todo = [
            r[0]
            for r in db.execute(
                "select s.id from samples s where (s.status = 'accepted' or (s.status = "
                "'pending' and exists (select 1 from verdicts v where v.sample_id = s.id and "
                "v.curator = 'dedup' and v.keep = 1))) and not exists (select 1 from minhashes "
                "m where m.sample_id = s.id and m.num_perm = ?) order by s.id",
                [self.num_perm],
            )
        ]
        for start in range(0, len(todo), 1000):  # a chunk at a time: 100k texts are 100 MB
            part = todo[start : start + 1000]
            marks = ",".join("?" * len(part))
            rows = []
            for sample_id, text in db.execute(
                f"select id, text from samples where id in ({marks}) order by id", part
            ):
                self.remove(sample_id)
                sig = signature(text, self.num_perm)
                rows.append((sample_id, self.num_perm, self.add(sample_id, sig)))
            write(store, rows)
            self.hashed += len(rows)
        self.bands.flush()


def earliest(store: Store, digests: list[str]) -> dict[str, int]:
    """The lowest id of an accepted or pending sample with each text hash: a sample is an
    exact duplicate when that id is lower than its own (Store.hash_kept_before, batched)."""
    marks = ",".join("?" * len(digests))
    rows = store.db.execute(
        f"select text_hash, min(id) from samples where text_hash in ({marks}) "
        "and +status in ('accepted', 'pending') group by text_hash",  # +: keep the hash index
        digests,
    )
    return dict(rows.fetchall())


def write(store: Store, rows: list[tuple[int, int, bytes]]) -> None:
    if rows:
        with store.db.conn:
            store.db.conn.executemany(
                "insert or replace into minhashes (sample_id, num_perm, signature) "
                "values (?, ?, ?)",
                rows,
            )


class DedupCurator:
    name = "dedup"
    Config = DedupConfig

    def __init__(self) -> None:
        self.index: NearIndex | None = None

    def _index(self, store: Store, cfg: DedupConfig) -> NearIndex:
        i = self.index
        if i is None or (i.path, i.threshold, i.num_perm) != (
            store.path,
            cfg.threshold,
            cfg.num_perm,
        ):
            self.index = i = NearIndex(store.path, cfg.threshold, cfg.num_perm)
        i.sync(store)
        return i

    def curate(self, samples: list[Sample], ctx: CycleContext) -> Iterator[Verdict]:
        cfg = DedupConfig(**ctx.plugin_config(self.name))
        index = self._index(ctx.store, cfg) if cfg.near else None
        rows: list[tuple[int, int, bytes]] = []
        first: dict[str, int] = {}
        try:
            for n, sample in enumerate(samples):
                if n % CHUNK == 0:
                    first = earliest(ctx.store, [s.text_hash for s in samples[n : n + CHUNK]])
                if first.get(sample.text_hash, sample.id) < sample.id:
                    yield Verdict(sample.id, False, 0.0, "exact duplicate of an earlier sample")
                    continue
                if index is None:
                    yield Verdict(sample.id, True, 1.0, "new text")
                    continue
                sig = signature(sample.text, cfg.num_perm)
                keys = index.keys(sig)
                hit = index.nearest(sig, sample.id, keys)
                if hit is not None:
                    other, sim = hit
                    reason = (
                        f"near-duplicate of sample {other} "
                        f"(Jaccard ~{sim:.2f} >= {cfg.threshold:.2f})"
                    )
                    yield Verdict(sample.id, False, round(1 - sim, 4), reason)
                    continue
                rows.append((sample.id, cfg.num_perm, index.add(sample.id, sig, keys)))
                if len(rows) >= FLUSH_EVERY:
                    write(ctx.store, rows)
                    rows = []
                yield Verdict(sample.id, True, 1.0, "new text: no exact or near duplicate")
        finally:
            write(ctx.store, rows)


@hookimpl
def register_curators(register) -> None:
    register(DedupCurator())
