"""Built-in `heldout` evaluator: loss and perplexity on the seed's held-out split.

The held-out split is packed by the trainer but never sampled for training, so its
perplexity is the honest measure of how well the grown model predicts the identity's text.
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import Field

from dte_aar.agent import Agent, tokens_file
from dte_aar.hookspecs import CycleContext, PluginConfig, hookimpl
from dte_aar.tokens import PackedTokens
from dte_aar.train import resolve_device


class HeldoutConfig(PluginConfig):
    max_tokens: int | None = Field(None, gt=0, description="evaluate at most this many tokens")


class HeldoutEvaluator:
    name = "heldout"
    Config = HeldoutConfig

    def evaluate(self, checkpoint: Path, ctx: CycleContext) -> dict[str, float]:
        cfg = HeldoutConfig(**ctx.plugin_config(self.name))
        data = PackedTokens(tokens_file(ctx.workspace, "heldout"))
        if len(data) < 2:
            raise ValueError(f"{data.path}: the held-out split is empty; nothing to measure")
        device = resolve_device(ctx.settings.train.device)
        agent = Agent.load(checkpoint, ctx.workspace, device=device)
        loss = agent.mean_loss(data, max_tokens=cfg.max_tokens)
        return {"heldout_loss": loss, "heldout_ppl": math.exp(loss)}


@hookimpl
def register_evaluators(register) -> None:
    register(HeldoutEvaluator())
