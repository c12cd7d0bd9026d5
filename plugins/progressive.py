"""Built-in `progressive` trainer: each cycle grows the model by one block and trains it.

One cycle: tokenizer (trained once, on the train split, then fixed) -> pack newly accepted
samples into the token files -> load the last good checkpoint and grow a block (or build a
1-block model on the first cycle) -> freeze by schedule -> train -> checkpoint atomically.

Freezing, ``greedy`` (the seed's schedule): the first cycle trains everything; afterwards
only the new top block (+ final norm and head) trains, except at every 4th layer, when the
top 4 train together (the joint phase). Once the model reaches its target depth it stops
growing and trains end to end (the refinement phase). ``none`` trains everything, always.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from itertools import islice

import torch
from pydantic import Field
from tokenizers import Tokenizer

from dte_aar.agent import checkpoint_file, tokenizer_file, tokens_file
from dte_aar.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_optimizer_state,
    save_checkpoint,
)
from dte_aar.hookspecs import CycleContext, PluginConfig, TrainResult, hookimpl
from dte_aar.model import PRESETS, GrowingTransformer
from dte_aar.tokenizer import load_tokenizer, save_tokenizer, tokenizer_hash, train_tokenizer
from dte_aar.tokens import PackedTokens
from dte_aar.train import configure_optimizer, resolve_device, train

SPLITS = ("train", "heldout")
JOINT_EVERY = 4  # greedy schedule: at every 4th layer the top 4 blocks train together


class ProgressiveConfig(PluginConfig):
    """Overrides of the preset's shape, read from ``[plugins.progressive]`` (tests, tinkering)."""

    d_model: int | None = Field(None, gt=0)
    n_heads: int | None = Field(None, gt=0)
    d_ff: int | None = Field(None, gt=0)
    target_layers: int | None = Field(None, gt=0)


def trainable_top_blocks(freeze: str, layers: int, first_cycle: bool, grew: bool) -> int | None:
    """How many top blocks train this cycle (None: the whole model, embeddings included)."""
    if freeze == "none" or first_cycle or not grew:
        return None
    if layers % JOINT_EVERY == 0:
        return JOINT_EVERY
    return 1


class ProgressiveTrainer:
    name = "progressive"
    Config = ProgressiveConfig

    def train(self, ctx: CycleContext) -> TrainResult:
        settings = ctx.settings
        cfg = settings.train
        ws = ctx.workspace
        pcfg = ProgressiveConfig(**ctx.plugin_config(self.name))
        preset = PRESETS[settings.preset]

        tok = self._tokenizer(ctx, cfg.vocab_size or preset.vocab_size)
        tok_hash = tokenizer_hash(tok)
        vocab = tok.get_vocab_size()
        packed = {}
        for split in SPLITS:
            packed[split] = PackedTokens(tokens_file(ws, split), vocab_size=vocab)
            todo = (s for s in ctx.store.corpus(split) if s[0] not in packed[split])
            packed[split].append(_encoded(tok, todo))

        device = resolve_device(cfg.device)
        gen = torch.Generator().manual_seed(ctx.seed)
        step0 = 0
        grew = False
        if ctx.checkpoint is None:
            overrides = {k: v for k, v in pcfg.model_dump().items() if v is not None}
            mcfg = replace(
                preset,
                vocab_size=vocab,
                seq_len=cfg.seq_len or preset.seq_len,
                n_layers=1,
                **overrides,
            )
            model = GrowingTransformer(mcfg, generator=gen)
        else:
            model, meta = load_checkpoint(ctx.checkpoint.path, ctx.checkpoint.sha256)
            if meta.get("tokenizer_hash") != tok_hash:
                raise CheckpointError(
                    f"{ctx.checkpoint.path}: trained with another tokenizer than "
                    f"{tokenizer_file(ws)}"
                )
            step0 = int(meta.get("step", 0))
            if len(model.blocks) < model.config.target_layers:
                model.grow(cfg.growth, generator=gen)
                grew = True
        layers = len(model.blocks)
        n_top = trainable_top_blocks(cfg.freeze, layers, ctx.checkpoint is None, grew)
        model.set_trainable(n_top)
        model.to(device)

        optimizer = configure_optimizer(model, cfg)
        restored = 0
        if ctx.checkpoint is not None:
            restored = load_optimizer_state(ctx.checkpoint.path, model, optimizer)

        steps = cfg.steps_per_cycle
        task = ctx.progress.task("training", total=steps)
        try:
            stats = train(
                model,
                packed["train"],
                steps,
                cfg,
                seed=ctx.seed,
                progress_task=task,
                log_metric=ctx.log_metric,
                optimizer=optimizer,
            )
        finally:
            task.close()

        path = checkpoint_file(ws, ctx.cycle)
        meta = {
            "cycle": ctx.cycle,
            "step": step0 + steps,
            "tokenizer_hash": tok_hash,
            "growth": cfg.growth if grew else None,
            "freeze": cfg.freeze,
            "seed": ctx.seed,
            "train_loss": stats["train_loss"],
        }
        save_checkpoint(path, model, meta, optimizer)
        metrics = {
            **stats,
            "trainable_params": float(model.num_params(trainable_only=True)),
            "optimizer_state_restored": float(restored),
            "train_tokens_total": float(len(packed["train"])),
        }
        return TrainResult(path=path, layers=layers, params=model.num_params(), metrics=metrics)

    def _tokenizer(self, ctx: CycleContext, vocab_size: int) -> Tokenizer:
        """The workspace's tokenizer; trained on the train split the first time."""
        path = tokenizer_file(ctx.workspace)
        if path.exists():
            return load_tokenizer(path)
        # A list, not a generator: tokenizers pulls from its iterator on another thread, and
        # an SQLite cursor may only be used on the thread that made it.
        texts = [text for _, text in ctx.store.corpus("train")]
        tok = train_tokenizer(texts, vocab_size)
        save_tokenizer(tok, path)
        return tok


def _encoded(
    tok: Tokenizer, samples: Iterable[tuple[int, str]], batch: int = 512
) -> Iterator[tuple[int, list[int]]]:
    """(sample_id, token ids) pairs, encoded a batch at a time (tokenizers runs in parallel)."""
    samples = iter(samples)
    while chunk := list(islice(samples, batch)):
        encodings = tok.encode_batch([text for _, text in chunk])
        for (sample_id, _), enc in zip(chunk, encodings, strict=True):
            yield sample_id, enc.ids


@hookimpl
def register_trainers(register) -> None:
    register(ProgressiveTrainer())
