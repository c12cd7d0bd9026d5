"""What `dte ablate` measures of a trained arm besides its curve: held-out loss on fixed
windows, the probes (as the milestone evaluator reads them) and the identity curator's score
of a few seeded sampled replies."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import torch
from tokenizers import Tokenizer

from dte_aar.agent import Agent, SamplingParams, tokenizer_file
from dte_aar.arena import Arena
from dte_aar.chat_template import format_prompt, reply_only, stop_sequences
from dte_aar.config import Settings
from dte_aar.model import GrowingTransformer
from dte_aar.tokenizer import save_tokenizer
from dte_aar_plugins.milestone import probe_scores


@torch.no_grad()
def heldout_loss(model: GrowingTransformer, windows: torch.Tensor, batch_size: int = 16) -> float:
    """Mean next-token cross-entropy over the evaluation windows."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(windows), batch_size):
        w = windows[i : i + batch_size].to(device)
        _, loss = model(w[:, :-1], w[:, 1:])
        total += loss.item() * len(w)
    model.train(was_training)
    return total / len(windows)


def probe_metrics(agent: Agent, arena: Arena) -> tuple[float | None, float | None]:
    """(probe_ppl, identity_score) exactly as the milestone evaluator computes them."""
    probes = arena.probes
    if len(probes) < 2:
        return None, None
    scores = probe_scores(agent, probes, arena.identity.name)
    return scores["probe_ppl"], scores["identity_score"]


class SampleScorer:
    """The identity curator's embedder and seed-calibrated threshold, on sampled replies."""

    def __init__(self, arena: Arena, settings: Settings, tok: Tokenizer, workdir: Path) -> None:
        from dte_aar_plugins.identity import EMBEDDERS, IdentityConfig, calibrate, identity_texts

        save_tokenizer(tok, tokenizer_file(workdir))  # the embedder reads the run's tokenizer
        cfg = IdentityConfig(**settings.plugins.get("identity", {}))
        ctx = SimpleNamespace(workspace=workdir, arena=arena, settings=settings)
        self.embedder = EMBEDDERS[cfg.embedder](ctx, cfg)  # type: ignore[arg-type]
        anchors = self.embedder.embed(identity_texts(arena))
        self.calibration = calibrate(anchors, "ablate", cfg.neighbours, cfg.percentile)
        self.threshold = self.calibration.threshold if cfg.threshold is None else cfg.threshold

    def score(self, texts: list[str]) -> tuple[float, float]:
        """(mean identity score, share at or above the threshold)."""
        scores = self.calibration.scores(self.embedder.embed(texts))
        return float(scores.mean()), float((scores >= self.threshold).mean())


def sample_replies(agent: Agent, arena: Arena, settings: Settings, n: int, seed: int) -> list[str]:
    """``n`` replies to seeded arena prompts, framed and cut as the checkpoint generator does."""
    rng = random.Random(seed)
    prompts = [rng.choice(arena.prompts) for _ in range(n)]
    g = settings.generate
    params = SamplingParams(
        g.max_new_tokens, g.temperature, g.top_k or None, None, stop_sequences()
    )
    framed = [format_prompt(p, None, arena.identity.name) for p in prompts]
    done = agent.generate_batch(framed, params, [seed * 1000 + i for i in range(n)])
    return [reply_only(c.text) for c in done]
