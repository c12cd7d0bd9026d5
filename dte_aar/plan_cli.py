"""`dte plan`'s face: the rich tables and the click command over :mod:`dte_aar.plan`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from dte_aar.config import TrainSettings, default_stages
from dte_aar.model import PRESETS
from dte_aar.plan import (
    DEFAULT_BYTES_PER_TOKEN,
    GPUS,
    SCHEDULES,
    Plan,
    PlanError,
    PlanRequest,
    _shape_fields,
    choose_mfu,
    make_plan,
    measure_bytes_per_token,
    model_config,
    parse_size,
    stages_for_depth,
    workspace_texts,
)


# ---------------------------------------------------------------------- output
def _count(n: float) -> str:
    """1.56e18 -> '1.56e18'; 249_297_840 -> '249.3M'."""
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}" if unit != "T" or n < 1e15 else f"{n:.3g}"
    return f"{n:g}"


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _hours(h: float) -> str:
    return f"{h:,.0f}" if h >= 100 else f"{h:.3g}"


def _money(x: float) -> str:
    return f"${x:,.0f}" if x >= 100 else f"${x:.2f}"


def _ratio(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def render(plan: Plan, console: Any) -> None:
    """The plan as three tables and a few header lines."""
    from rich.table import Table

    m, c = plan.model, plan.corpus
    parts = [f"co-occurrence rank {m['cooc_rank']}"] if m["cooc_rank"] else []
    parts += ["key bias"] if m["key_bias"] else []
    cols = model_config(_shape_fields(m)).prior_columns
    priors = f"{' + '.join(parts)} ({cols} q/k columns per head)" if parts else "off"
    name = f"{m['preset']} preset: " if m["preset"] else ""
    micro = plan.schedules[0].peak_memory.micro_batch
    gates = "every stage spends its cycle budget" if plan.gates == "budget" else "pass at once"
    size = f"{_count(c.bytes)}B of text at " if c.bytes else ""
    lines = [
        f"[bold]model[/bold]  {name}d_model {m['d_model']}, {m['n_heads']} heads, d_ff "
        f"{m['d_ff']}, vocab {m['vocab_size']:,}, seq {m['seq_len']:,}, {m['layers']} layers; "
        f"attention priors {priors}; {plan.params:,} parameters",
        f"[bold]corpus[/bold] {size}{c.bytes_per_token:.2f} bytes/token "
        f"({c.bytes_per_token_source}) = {_count(c.tokens)} tokens x {c.epochs:g} epoch(s): "
        f"D = {_count(c.trained_tokens)} tokens trained",
        f"[bold]run[/bold]    {plan.gpus} GPU{'s' if plan.gpus > 1 else ''}, batch "
        f"{plan.batch_size} x {m['seq_len']:,} tokens, micro-batch {micro} per GPU; stage gates: "
        f"{gates}",
        f"[bold]MFU[/bold]    {plan.mfu.value:.2f}: {plan.mfu.source}",
        *(f"note: {note}" for note in plan.notes),
    ]
    for line in lines:
        console.print(line, highlight=False)

    fsdp = plan.gpus > 1
    t = Table(title="Training compute (every schedule trains D tokens)", title_justify="left")
    for col in ("schedule", "cycles", "tokens/cycle", "steps/cycle", "FLOPs", "x full"):
        t.add_column(col, justify="left" if col == "schedule" else "right")
    t.add_column("mem/GPU", justify="right")
    if fsdp:
        t.add_column("FSDP", justify="right")
    t.add_column("peak at", no_wrap=True)
    for s in plan.schedules:
        mem = s.peak_memory
        peak = s.cycles[s.peak_cycle - 1]
        top = "all" if peak.trainable_top is None else f"top {peak.trainable_top}"
        row = [s.schedule, str(len(s.cycles)), _count(s.cycles[0].tokens)]
        row += [f"{s.steps_per_cycle:,.0f}", f"{s.flops:.3g}", f"{s.ratio_to_full:.2f}"]
        row += [_gib(mem.total)] + ([_gib(mem.fsdp_total or 0)] if fsdp else [])
        row += [f"{peak.layers} layers ({top})"]
        t.add_row(*row)
    console.print(t)

    t = Table(title=f"Time and cost at MFU {plan.mfu.value:.2f}", title_justify="left")
    cols = ("GPU", "schedule", "hours", "GPU-hours", "$/GPU-h", "cost", f"fits at {micro}")
    for col in (*cols, "max micro-batch"):
        t.add_column(col, justify="left" if col in ("GPU", "schedule") else "right")
    for e in plan.estimates:
        t.add_row(
            e.gpu, e.schedule, _hours(e.hours), _hours(e.gpu_hours), f"{e.price_per_hour:.2f}",
            _money(e.cost), "yes" if e.fits else "NO", str(e.max_micro_batch),
        )  # fmt: skip
    console.print(t)

    s = plan.seed
    t = Table(title="The seed document's figure beside this planner (A100)", title_justify="left")
    for col in ("", "params", "tokens", "A100-hours", "seed / planner"):
        t.add_column(col, justify="left" if not col else "right")
    t.add_row('seed: "a 124M model needs 1,200 A100-hours"', _count(s.claim_params),
              "not stated", f"{s.claim_a100_hours:,.0f}", "")  # fmt: skip
    rows = [
        ("GPT-2 small shape, this corpus", s.gpt2_params, c.trained_tokens,
         s.a100_hours_this_corpus),
        ("GPT-2 small shape, 20 tokens/param", s.gpt2_params, s.chinchilla_tokens,
         s.a100_hours_chinchilla),
        *((f"this model, {name}", plan.params, c.trained_tokens, hours)
          for name, hours in s.a100_hours_this_plan.items()),
    ]  # fmt: skip
    for label, params, tokens, hours in rows:
        t.add_row(f"planner: {label}", _count(params), _count(tokens), _hours(hours),
                  _ratio(s.claim_a100_hours / hours))  # fmt: skip
    console.print(t)
    console.print(
        f"1,200 A100-hours at MFU {plan.mfu.value:.2f} would train GPT-2 small's shape on "
        f"{_count(s.tokens_the_claim_buys)} tokens.",
        highlight=False,
    )


# ---------------------------------------------------------------------- the command
def _size(option: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = parse_size(text)
    except ValueError as exc:
        raise PlanError(f"{option}: {exc}") from None
    if value <= 0:
        raise PlanError(f"{option}: must be positive (got {text!r})")
    return value


def build_request(opts: dict[str, Any], results: Path | None = None) -> PlanRequest:
    """The plan's inputs from the command's options and, with ``--workspace``, its settings,
    tokenizer and corpus."""
    from dte_aar.config import ConfigError, load_settings

    ws: Path | None = opts.get("workspace")
    train, stages, preset, arena = TrainSettings(), default_stages(), "small", None
    overrides: dict[str, Any] = {}
    if ws is not None:
        try:
            settings = load_settings(ws)
        except ConfigError as exc:
            raise PlanError(str(exc)) from None
        train, stages, preset, arena = (
            settings.train,
            settings.stages,
            settings.preset,
            settings.arena,
        )
        overrides = {
            k: v
            for k, v in settings.plugins.get("progressive", {}).items()
            if k in ("d_model", "n_heads", "d_ff")
        }
    preset = opts.get("preset") or preset
    base = PRESETS[preset]
    shape: dict[str, int | bool] = {
        "vocab_size": train.vocab_size or base.vocab_size,
        "d_model": base.d_model,
        "n_heads": base.n_heads,
        "d_ff": base.d_ff,
        "seq_len": train.seq_len or base.seq_len,
        "target_layers": base.target_layers,
        "cooc_rank": train.cooc_rank,
        "key_bias": True,  # the progressive trainer always builds it
        **overrides,
    }
    bpt, bpt_source, measured = DEFAULT_BYTES_PER_TOKEN, "assumed: English BPE, ~50k vocab", None
    if ws is not None:
        from dte_aar.agent import tokenizer_file
        from dte_aar.tokenizer import load_tokenizer

        if tokenizer_file(ws).exists():
            tok = load_tokenizer(tokenizer_file(ws))
            shape["vocab_size"] = tok.get_vocab_size()
            texts, where = workspace_texts(ws, arena or "deep_tree_echo")
            n_bytes, n_tokens = measure_bytes_per_token(texts, tok)
            if n_tokens:
                bpt = n_bytes / n_tokens
                bpt_source = f"measured: the workspace's tokenizer on {where}"
                measured = sum(len(t.encode("utf-8")) for t in texts)
        else:
            bpt_source += f"; {ws} has no tokenizer yet"
    for key, opt in (
        ("d_model", "d_model"),
        ("n_heads", "n_heads"),
        ("d_ff", "d_ff"),
        ("vocab_size", "vocab"),
        ("seq_len", "seq_len"),
        ("cooc_rank", "cooc_rank"),
    ):
        if opts.get(opt) is not None:
            shape[key] = opts[opt]
    reshaped = bool(overrides) or any(opts.get(k) for k in ("d_model", "n_heads", "d_ff"))
    if opts.get("layers"):
        stages = stages_for_depth(stages, opts["layers"])
        shape["target_layers"] = opts["layers"]
    try:
        model_config(shape)
    except ValueError as exc:
        raise PlanError(str(exc)) from None

    corpus_bytes = _size("--corpus-bytes", opts.get("corpus_bytes"))
    corpus_tokens = _size("--corpus-tokens", opts.get("corpus_tokens"))
    if corpus_bytes is not None and corpus_tokens is not None:
        raise PlanError("give --corpus-bytes or --corpus-tokens, not both")
    if corpus_bytes is None and corpus_tokens is None:
        if measured is None:
            raise PlanError(
                "give --corpus-bytes or --corpus-tokens (or a --workspace with a "
                "tokenizer, to plan for its own corpus)"
            )
        corpus_bytes = measured
    if corpus_tokens is None:
        corpus_tokens = max(1, round(corpus_bytes / bpt))
    chosen = opts.get("schedule") or "all"
    names = [n.upper() for n in opts.get("gpu") or ()] or list(GPUS)
    return PlanRequest(
        shape=shape,
        preset=None if reshaped else preset,
        corpus_tokens=corpus_tokens,
        corpus_bytes=corpus_bytes,
        bytes_per_token=bpt,
        bytes_per_token_source=bpt_source,
        epochs=opts.get("epochs") or 1.0,
        stages=stages,
        layers_per_cycle=train.layers_per_cycle,
        batch_size=opts.get("batch_size") or train.batch_size,
        micro_batch=opts.get("micro_batch") or train.micro_batch_size,
        gates=opts.get("gates") or "budget",
        schedules=list(SCHEDULES) if chosen == "all" else [chosen],
        gpus=opts.get("gpus") or 1,
        gpu_names=list(dict.fromkeys(names)),
        mfu=choose_mfu(opts.get("mfu"), results),
        price_per_hour=opts.get("price_per_hour"),
    )


_positive = click.IntRange(min=1)


@click.command("plan")
@click.option(
    "--preset",
    type=click.Choice(sorted(PRESETS)),
    help="Model size (default: the workspace's, else small).",
)
@click.option("--d-model", type=_positive, help="Override the preset's width.")
@click.option("--n-heads", type=_positive, help="Override the preset's attention heads.")
@click.option("--d-ff", type=_positive, help="Override the preset's MLP width.")
@click.option("--layers", type=_positive, help="Final depth (the stages are scaled to it).")
@click.option("--vocab", type=_positive, help="Vocabulary size.")
@click.option("--seq-len", type=_positive, help="Context length.")
@click.option(
    "--cooc-rank",
    type=click.IntRange(min=0),
    help="Co-occurrence prior rank (default: train.cooc_rank).",
)
@click.option("--corpus-bytes", metavar="SIZE", help="Corpus size in bytes: 2G, 500M, 1.5GiB.")
@click.option("--corpus-tokens", metavar="SIZE", help="Corpus size in tokens: 50M, 2G.")
@click.option(
    "--epochs",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Passes over the corpus: D = corpus tokens x epochs.",
)
@click.option(
    "--workspace",
    "-w",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Read settings, tokenizer (bytes/token) and corpus from this workspace.",
)
@click.option(
    "--gpu",
    multiple=True,
    type=click.Choice(list(GPUS), case_sensitive=False),
    help="GPU to price (repeatable; default: all).",
)
@click.option("--gpus", type=_positive, default=1, show_default=True, help="GPUs per run.")
@click.option("--batch-size", type=_positive, help="Sequences per step (default: train's).")
@click.option(
    "--micro-batch",
    type=_positive,
    help="Sequences per forward pass per GPU (default: batch / GPUs).",
)
@click.option(
    "--mfu",
    type=click.FloatRange(min=0, max=1, min_open=True),
    help="Model FLOPs utilisation (default: measured, else 0.35).",
)
@click.option(
    "--price-per-hour", type=click.FloatRange(min=0), help="USD per GPU-hour, for every GPU shown."
)
@click.option(
    "--schedule",
    type=click.Choice(["greedy", "none", "full", "all"]),
    default="all",
    show_default=True,
    help="Which schedules to count.",
)
@click.option(
    "--gates",
    type=click.Choice(["budget", "pass"]),
    default="budget",
    show_default=True,
    help="Stage gates: spend every cycle budget, or pass at once.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_command(as_json: bool, **opts: Any) -> None:
    """Estimate parameters, training FLOPs, memory, hours and cost of a run.

    D, the tokens trained, is the corpus in tokens times --epochs; every schedule trains D:
    full (all layers from the start), greedy and none (the progressive run, D split evenly
    over its cycles, frozen blocks counted forward-only).
    """
    plan = make_plan(build_request(opts))
    if as_json:
        click.echo(plan.model_dump_json(indent=2))
        return
    from rich.console import Console

    render(plan, Console(soft_wrap=False))
