"""Built-in `dedup` curator: exact duplicates against the whole corpus, seed included.

The key is the whitespace-normalised, case-folded text hash stored with every sample, so the
check is one indexed lookup and survives restarts (the corpus itself is the persisted set).
A sample is a duplicate when an earlier sample with the same key is accepted or still pending.
"""

from __future__ import annotations

from collections.abc import Iterable

from dte_aar.hookspecs import CycleContext, Sample, Verdict, hookimpl


class DedupCurator:
    name = "dedup"

    def curate(self, samples: list[Sample], ctx: CycleContext) -> Iterable[Verdict]:
        for sample in samples:
            if ctx.store.hash_kept_before(sample.text_hash, sample.id):
                yield Verdict(sample.id, False, 0.0, "exact duplicate of an earlier sample")
            else:
                yield Verdict(sample.id, True, 1.0, "new text")


@hookimpl
def register_curators(register) -> None:
    register(DedupCurator())
