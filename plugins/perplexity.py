"""`perplexity` curator: rejects what the current model finds implausible, and loops.

Each sample is scored as the model saw text in training: after an end-of-text token and
followed by one, as the mean next-token cross-entropy (nats per token). The yardstick is the
same measure on the seed's held-out split (text training never saw, in the identity's
voice), computed once per checkpoint:

- implausible: perplexity above ``max_ratio`` x the held-out perplexity (loss above
  held-out + ln max_ratio), or loss above ``max_loss``: noise, another language, a broken
  encoding, text far from anything the model has learned. A ratio of perplexities, not of
  losses: it means the same for a young model (held-out loss near ln V, where everything
  looks alike and little is rejected) as for a grown one;
- degenerate loop: perplexity below ``loop_ratio`` x the held-out perplexity *and* at least
  ``loop_repeat`` of the token 4-grams repeated. Low perplexity alone is no fault (a fluent,
  on-identity sample may be easy); with heavy repetition it is the model copying itself.

Before the first checkpoint there is nothing to measure with, and every sample is kept with
a reason that says so. The calibration is logged as ``perplexity_reference_loss``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field

from dte_aar.hookspecs import CycleContext, PluginConfig, Sample, Verdict, hookimpl
from dte_aar.tokenizer import EOT_ID

if TYPE_CHECKING:
    import torch


class PerplexityConfig(PluginConfig):
    max_ratio: float = Field(4.0, gt=1, description="reject ppl above this x held-out ppl")
    max_loss: float | None = Field(None, gt=0, description="also reject loss above this")
    loop_ratio: float = Field(0.25, gt=0, lt=1, description="loop: ppl below this x held-out")
    loop_repeat: float = Field(
        0.3, ge=0, le=1, description="loop: at least this share of token 4-grams repeated"
    )
    max_tokens: int = Field(1024, ge=8, description="score at most this many tokens a sample")
    batch_size: int = Field(16, ge=1, description="windows per forward pass")
    reference_samples: int = Field(256, ge=1, description="held-out samples to calibrate on")


@dataclass(frozen=True)
class Reference:
    """The held-out yardstick for one checkpoint."""

    sha256: str
    loss: float  # token-weighted mean loss of the reference texts
    samples: int
    split: str  # heldout, or train when the seed has no held-out split


def repeated_ngrams(ids: Sequence[int], n: int = 4) -> float:
    """Share of token n-grams that repeat an earlier one (0 for short texts)."""
    grams = list(zip(*(ids[k:] for k in range(n)), strict=False))
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def sample_losses(
    model: Any, token_lists: Sequence[Sequence[int]], batch_size: int, device: torch.device
) -> list[tuple[float, int]]:
    """(summed loss, targets) of each token list, read as ``EOT ids EOT`` like training data.

    Long lists are cut into ``seq_len`` windows; windows of similar length share a padded
    batch (right padding cannot change a causal model's earlier positions).
    """
    import torch  # here, not at the top: loading the plugin list should not load torch
    from torch.nn import functional as F

    seq_len = model.config.seq_len
    windows: list[tuple[int, list[int], list[int]]] = []
    for i, ids in enumerate(token_lists):
        stream = [EOT_ID, *ids, EOT_ID]
        for s in range(0, len(stream) - 1, seq_len):
            chunk = stream[s : s + seq_len + 1]
            windows.append((i, chunk[:-1], chunk[1:]))
    windows.sort(key=lambda w: len(w[1]))
    totals = [[0.0, 0] for _ in token_lists]
    with torch.no_grad():
        for b in range(0, len(windows), batch_size):
            group = windows[b : b + batch_size]
            width = max(len(x) for _, x, _ in group)
            x = torch.zeros(len(group), width, dtype=torch.long)
            y = torch.full((len(group), width), -100, dtype=torch.long)
            for row, (_, xs, ys) in enumerate(group):
                x[row, : len(xs)] = torch.tensor(xs)
                y[row, : len(ys)] = torch.tensor(ys)
            logits, _ = model(x.to(device))
            loss = F.cross_entropy(
                logits.float().transpose(1, 2), y.to(device), reduction="none", ignore_index=-100
            ).sum(dim=1)
            for row, (i, _, ys) in enumerate(group):
                totals[i][0] += float(loss[row])
                totals[i][1] += len(ys)
    return [(total, int(n)) for total, n in totals]


class PerplexityCurator:
    name = "perplexity"
    Config = PerplexityConfig

    def __init__(self) -> None:
        self._agent: Any = None
        self._agent_sha: str | None = None
        self._reference: Reference | None = None
        self._reference_key: tuple = ()

    def _load(self, ctx: CycleContext) -> Any:
        from dte_aar.agent import Agent
        from dte_aar.train import resolve_device

        assert ctx.checkpoint is not None
        if self._agent_sha != ctx.checkpoint.sha256:
            device = resolve_device(ctx.settings.train.device)
            self._agent = Agent.load(
                ctx.checkpoint.path, ctx.workspace, ctx.checkpoint.sha256, device=device
            )
            self._agent_sha = ctx.checkpoint.sha256
        return self._agent

    def losses(self, agent: Any, texts: Sequence[str], cfg: PerplexityConfig) -> list[tuple]:
        """(mean loss per token, token ids) of each text under ``agent``."""
        ids = [enc.ids[: cfg.max_tokens] for enc in agent.tokenizer.encode_batch(list(texts))]
        summed = sample_losses(agent.model, ids, cfg.batch_size, agent.device)
        return [(total / max(1, n), i) for (total, n), i in zip(summed, ids, strict=True)]

    def reference(self, ctx: CycleContext, agent: Any, cfg: PerplexityConfig) -> Reference:
        """Token-weighted mean loss on the seed's held-out samples (the train split if none)."""
        sha = ctx.checkpoint.sha256 if ctx.checkpoint else ""
        key = (sha, cfg.reference_samples, cfg.max_tokens)
        if self._reference is not None and self._reference_key == key:
            return self._reference
        for split in ("heldout", "train"):
            texts = [
                row[0]
                for row in ctx.store.db.execute(
                    "select text from samples where source = 'seed' and split = ? "
                    "and status = 'accepted' order by id limit ?",
                    [split, cfg.reference_samples],
                )
            ]
            if texts:
                break
        else:
            raise ValueError("the store holds no seed samples to calibrate perplexity on")
        ids = [enc.ids[: cfg.max_tokens] for enc in agent.tokenizer.encode_batch(texts)]
        summed = sample_losses(agent.model, ids, cfg.batch_size, agent.device)
        loss = sum(t for t, _ in summed) / max(1, sum(n for _, n in summed))
        self._reference, self._reference_key = Reference(sha, loss, len(texts), split), key
        return self._reference

    def curate(self, samples: list[Sample], ctx: CycleContext) -> Iterable[Verdict]:
        cfg = PerplexityConfig(**ctx.plugin_config(self.name))
        if ctx.checkpoint is None:
            for sample in samples:
                yield Verdict(sample.id, True, 1.0, "no checkpoint yet: perplexity not measured")
            return
        agent = self._load(ctx)
        ref = self.reference(ctx, agent, cfg)
        ctx.log_metric("perplexity_reference_loss", ref.loss, None)
        high = ref.loss + math.log(cfg.max_ratio)
        if cfg.max_loss is not None:
            high = min(high, cfg.max_loss)
        low = ref.loss + math.log(cfg.loop_ratio)
        for start in range(0, len(samples), 64):
            batch = samples[start : start + 64]
            for sample, (loss, ids) in zip(
                batch, self.losses(agent, [s.text for s in batch], cfg), strict=True
            ):
                yield judge(sample.id, loss, repeated_ngrams(ids), ref, high, low, cfg)


def judge(
    sample_id: int,
    loss: float,
    repeat: float,
    ref: Reference,
    high: float,
    low: float,
    cfg: PerplexityConfig,
) -> Verdict:
    """The verdict for one sample's loss and repetition against the thresholds."""
    ppl = math.exp(min(loss, 50.0))
    where = f"loss {loss:.2f} (ppl {ppl:.1f}) vs {ref.split} {ref.loss:.2f}"
    if loss > high:
        reason = f"implausible: {where} > {high:.2f}"
        return Verdict(sample_id, False, round(high / loss, 4), reason)
    if loss < low and repeat >= cfg.loop_repeat:
        reason = f"degenerate loop: {where} < {low:.2f} with {repeat:.0%} repeated 4-grams"
        return Verdict(sample_id, False, round(max(0.0, loss / low) * (1 - repeat), 4), reason)
    return Verdict(sample_id, True, 1.0, f"plausible: {where}, max {high:.2f}")


@hookimpl
def register_curators(register) -> None:
    register(PerplexityCurator())
