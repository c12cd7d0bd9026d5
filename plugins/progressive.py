"""Built-in `progressive` trainer: each cycle grows the model by ``ctx.grow`` blocks and trains.

One cycle: tokenizer (trained once on the train split, identity phrases as single tokens) ->
pack newly accepted samples into the token files -> load the last good checkpoint and grow
(or, the first cycle, build the model with its identity-embedded init) -> freeze by schedule
-> build the stage's objective -> train -> checkpoint atomically.

Identity-embedded init, first cycle only: Word2Vec token embeddings (``embedding_init``),
the co-occurrence prior's factors from the train split (``cooc_rank`` > 0; buffers, so every
checkpoint carries them), and the key bias at log(self_reference_boost) for the
self-reference tokens.

Freezing, ``greedy`` (the seed's schedule): the first cycle trains everything; afterwards only
the new blocks (+ final norm and head) train, except when the depth passes a multiple of 4,
when the top 4 train together (the joint phase). A cycle that holds the depth (``grow`` 0: a
stage gate, or refinement) trains end to end, as does a stage with ``unfreeze_all``.
``none`` trains everything, always.

Stopping early (``ctx.should_stop()``, e.g. a daemon's SIGTERM): the step under way finishes,
the weights, optimizer state and loop state go to a *partial* checkpoint
(``checkpoints/partial/``) and :class:`~dte_aar.hookspecs.Stopped` is raised. The next attempt
at the same cycle rebuilds the model exactly as before (same base checkpoint, growth and
objective), lays the partial weights over it and continues from the step after; since batches
and the learning rate depend on the step alone, the result is the uninterrupted one. A partial
made from another base, corpus or step count is ignored.

Under ``dte train --nproc N`` (see :mod:`dte_aar.distributed`) every rank runs this; rank 0
alone writes the tokenizer, the token files and the checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from tokenizers import Tokenizer

from dte_aar import distributed
from dte_aar.agent import checkpoint_file, tokenizer_file, tokens_file
from dte_aar.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_optimizer_state,
    save_checkpoint,
)
from dte_aar.distributed import FSDP_PRESETS
from dte_aar.embeddings import cooccurrence_factors, word2vec_embeddings
from dte_aar.files import remove_checkpoint_files
from dte_aar.hookspecs import CycleContext, PluginConfig, Stopped, TrainResult, hookimpl
from dte_aar.losses import Objective
from dte_aar.model import PRESETS, GrowingTransformer, ModelConfig
from dte_aar.objective import stage_objective
from dte_aar.schedule import trainable_top_blocks
from dte_aar.tokenizer import (
    load_tokenizer,
    save_tokenizer,
    self_reference_ids,
    tokenizer_hash,
    train_tokenizer,
)
from dte_aar.tokens import PackedTokens, encode_samples, split_documents
from dte_aar.train import TrainState, configure_optimizer, resolve_device, train

SPLITS = ("train", "heldout")


class ProgressiveConfig(PluginConfig):
    """Overrides of the preset's shape, read from ``[plugins.progressive]`` (tests, tinkering)."""

    d_model: int | None = Field(None, gt=0)
    n_heads: int | None = Field(None, gt=0)
    d_ff: int | None = Field(None, gt=0)
    target_layers: int | None = Field(None, gt=0)


class ProgressiveTrainer:
    name = "progressive"
    Config = ProgressiveConfig

    def train(self, ctx: CycleContext) -> TrainResult:
        cfg = ctx.settings.train
        phrases = list(ctx.arena.identity.self_reference)
        tok, packed = self._data(ctx, phrases)
        self_ids = self_reference_ids(tok, phrases)
        model, step0 = self._model(ctx, tok, packed["train"], self_ids)
        first = ctx.checkpoint is None
        grew = 0 if first else ctx.grow
        layers = len(model.blocks)
        unfreeze_all = ctx.stage_settings.unfreeze_all
        n_top = trainable_top_blocks(cfg.freeze, layers, first, grew, unfreeze_all)
        model.set_trainable(n_top)

        optimizer = configure_optimizer(model, cfg)
        restored = 0
        if not first:
            restored = load_optimizer_state(ctx.checkpoint.path, model, optimizer)
        objective = self.objective(ctx, model, tok, self_ids)
        fsdp = ctx.settings.preset in FSDP_PRESETS and distributed.world()[1] > 1
        if fsdp:
            optimizer = distributed.shard(model, optimizer, lambda m: configure_optimizer(m, cfg))

        steps = cfg.steps_per_cycle
        partial = partial_file(ctx.workspace, ctx.cycle)
        stamp = _partial_stamp(ctx, steps, len(packed["train"]))
        state = _resume_partial(partial, stamp, model, optimizer) if not fsdp else None
        state = state or TrainState()
        if distributed.is_main():  # rows of the steps about to run (again): none are doubled
            ctx.store.clear_metrics(ctx.cycle, "train", from_step=state.step, summary=False)
        if state.step:
            ctx.log_metric("resumed_at_step", float(state.step), state.step)
        task = ctx.progress.task("training", total=steps)
        task.advance(state.step)
        single = distributed.world()[1] == 1  # a stop under torchrun is not coordinated
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
                objective=objective,
                start_step=state.step,
                should_stop=ctx.should_stop if single else None,
                state=state,
            )
        finally:
            task.close()
        if stats.pop("stopped_at_step", None) is not None:
            save_checkpoint(partial, model, {"partial": stamp, "train_state": state.to_json()},
                            optimizer)  # fmt: skip
            raise Stopped(f"training stopped at step {state.step} of {steps}; saved {partial}")
        if fsdp:  # full weights and optimizer state on rank 0, to write the checkpoint
            whole = distributed.gather(
                model,
                optimizer,
                lambda weights: _plain_model(model.config, weights, n_top),
                lambda m: configure_optimizer(m, cfg),
            )
            model, optimizer = whole if whole is not None else (model, optimizer)

        path = checkpoint_file(ctx.workspace, ctx.cycle)
        meta = {
            "cycle": ctx.cycle,
            "step": step0 + steps,
            "stage": ctx.stage,
            "stage_name": ctx.stage_settings.name,
            "grew": grew,
            "tokenizer_hash": tokenizer_hash(tok),
            "growth": cfg.growth if grew else None,
            "freeze": cfg.freeze,
            "losses": objective.active(),
            "self_reference_ids": self_ids,
            "seed": ctx.seed,
            "train_loss": stats["train_loss"],
        }
        if distributed.is_main():
            save_checkpoint(path, model, meta, optimizer)
            remove_checkpoint_files(partial)
        metrics = {
            **stats,
            "trainable_params": float(model.num_params(trainable_only=True)),
            "optimizer_state_restored": float(restored),
            "train_tokens_total": float(len(packed["train"])),
            "self_reference_tokens": float(len(self_ids)),
        }
        return TrainResult(path=path, layers=layers, params=model.num_params(), metrics=metrics)

    def _data(
        self, ctx: CycleContext, phrases: list[str]
    ) -> tuple[Tokenizer, dict[str, PackedTokens]]:
        """Tokenizer and token files: rank 0 writes them, the other ranks then read them."""
        ws = ctx.workspace
        if distributed.is_main():
            preset = PRESETS[ctx.settings.preset]
            tok = self._tokenizer(ctx, ctx.settings.train.vocab_size or preset.vocab_size, phrases)
            packed = self._pack(ctx, tok)
        distributed.barrier()
        if not distributed.is_main():
            tok = load_tokenizer(tokenizer_file(ws))
            packed = {split: PackedTokens(tokens_file(ws, split)) for split in SPLITS}
        return tok, packed

    def _model(
        self, ctx: CycleContext, tok: Tokenizer, train_data: PackedTokens, self_ids: list[int]
    ) -> tuple[GrowingTransformer, int]:
        """The model on its device, the same on every rank, and the step count so far: built
        with its identity-embedded init the first cycle, else loaded and grown by ctx.grow."""
        cfg = ctx.settings.train
        gen = torch.Generator().manual_seed(ctx.seed)
        step0 = 0
        if ctx.checkpoint is None:
            preset = PRESETS[ctx.settings.preset]
            overrides = ProgressiveConfig(**ctx.plugin_config(self.name)).model_dump()
            mcfg = replace(
                preset,
                vocab_size=tok.get_vocab_size(),
                seq_len=cfg.seq_len or preset.seq_len,
                n_layers=max(1, ctx.grow),
                cooc_rank=cfg.cooc_rank,
                key_bias=True,
                **{k: v for k, v in overrides.items() if v is not None},
            )
            model = GrowingTransformer(mcfg, generator=gen)
            if distributed.is_main():  # the others get rank 0's weights just below
                self._identity_init(model, train_data, ctx, self_ids)
        else:
            model, meta = load_checkpoint(ctx.checkpoint.path, ctx.checkpoint.sha256)
            if meta.get("tokenizer_hash") != tokenizer_hash(tok):
                raise CheckpointError(
                    f"{ctx.checkpoint.path}: trained with another tokenizer than "
                    f"{tokenizer_file(ctx.workspace)}"
                )
            step0 = int(meta.get("step", 0))
            if ctx.grow:
                model.grow(cfg.growth, generator=gen, n=ctx.grow)
        model.to(distributed.local_device(resolve_device(cfg.device)))
        distributed.broadcast_model(model)
        return model, step0

    # ------------------------------------------------------------------ pieces
    def _tokenizer(self, ctx: CycleContext, vocab_size: int, phrases: list[str]) -> Tokenizer:
        """The workspace's tokenizer; trained on the train split the first time."""
        path = tokenizer_file(ctx.workspace)
        if path.exists():
            return load_tokenizer(path)
        # A list, not a generator: tokenizers pulls from its iterator on another thread, and
        # an SQLite cursor may only be used on the thread that made it.
        texts = [text for _, text in ctx.store.corpus("train")]
        tok = train_tokenizer(texts, vocab_size, phrases=phrases)
        save_tokenizer(tok, path)
        return tok

    def _pack(self, ctx: CycleContext, tok: Tokenizer) -> dict[str, PackedTokens]:
        """Append the accepted samples not packed yet to each split's token file."""
        packed = {}
        for split in SPLITS:
            packed[split] = PackedTokens(tokens_file(ctx.workspace, split), tok.get_vocab_size())
            todo = (s for s in ctx.store.corpus(split) if s[0] not in packed[split])
            packed[split].append(encode_samples(tok, todo))
        return packed

    def _identity_init(
        self, model: GrowingTransformer, data: PackedTokens, ctx: CycleContext, self_ids: list[int]
    ) -> None:
        """Word2Vec embeddings, the co-occurrence factors and the key bias (first cycle)."""
        cfg = ctx.settings.train
        sequences = split_documents(data.memmap())
        vocab, d = model.config.vocab_size, model.config.d_model
        with torch.no_grad():
            if cfg.embedding_init == "word2vec":
                # One worker: gensim's threads race, and a rerun cycle must write the same
                # checkpoint. It runs once per workspace, on the train split only.
                emb = word2vec_embeddings(sequences, vocab, d, seed=ctx.seed, workers=1)
                model.tok_emb.weight.copy_(emb)
            if cfg.cooc_rank:
                u, v = cooccurrence_factors(
                    sequences, vocab, cfg.cooc_rank, window=cfg.cooc_window, seed=ctx.seed
                )
                model.set_cooc_factors(u, v)
            model.init_key_bias(self_ids, math.log(cfg.self_reference_boost))

    def objective(
        self, ctx: CycleContext, model: GrowingTransformer, tok: Tokenizer, self_ids: list[int]
    ) -> Objective:
        """The stage's loss terms (:func:`dte_aar.objective.stage_objective`)."""
        return stage_objective(ctx.settings, ctx.stage_settings, ctx.arena, model, tok, self_ids)


def partial_file(workspace: Path, cycle: int) -> Path:
    """Where a stopped training phase keeps its weights until the cycle trains again."""
    path = checkpoint_file(workspace, cycle)
    return path.parent / "partial" / path.name


def _partial_stamp(ctx: CycleContext, steps: int, train_tokens: int) -> dict[str, Any]:
    """What a partial must have been made from to be continued: the same base checkpoint,
    growth, schedule length and training data."""
    return {
        "cycle": ctx.cycle,
        "base": ctx.checkpoint.sha256 if ctx.checkpoint else None,
        "grow": ctx.grow,
        "stage": ctx.stage,
        "steps": steps,
        "train_tokens": train_tokens,
        "seed": ctx.seed,
    }


def _resume_partial(
    path: Path, stamp: dict[str, Any], model: GrowingTransformer, optimizer: Any
) -> TrainState | None:
    """Lay a matching partial checkpoint's weights and optimizer state over ``model``;
    None (and the partial removed) when there is none or it does not match."""
    if not path.exists():
        return None
    try:
        saved, meta = load_checkpoint(path)
        if meta.get("partial") != stamp or saved.config != model.config:
            raise CheckpointError(f"{path}: made from another base, corpus or shape")
        model.load_state_dict(saved.state_dict())
        load_optimizer_state(path, model, optimizer)
    except (CheckpointError, RuntimeError):  # another shape (the config changed) or unreadable
        remove_checkpoint_files(path)
        return None
    return TrainState.from_json(meta.get("train_state", {}))


def _plain_model(
    config: ModelConfig, weights: dict[str, torch.Tensor], n_top: int | None
) -> GrowingTransformer:
    with torch.device("meta"):
        model = GrowingTransformer(config)
    model.load_state_dict(weights, assign=True)
    model.set_trainable(n_top)
    return model


@hookimpl
def register_trainers(register: Any) -> None:
    register(ProgressiveTrainer())
