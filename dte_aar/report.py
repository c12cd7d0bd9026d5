"""`dte report`: a Markdown report with PNG plots of one workspace, read-only.

Reads the same :class:`~dte_aar.tui.queries.Snapshot` as `dte watch` (finer loss curve), and
draws with matplotlib's object API on the Agg canvas (no pyplot, no display needed):
loss by step coloured by layer count, held-out perplexity and identity score per cycle,
corpus growth by source, kept/rejected by curator, and the stage timeline.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from pathlib import Path
from typing import Any

import click

from dte_aar.cli_options import resolve_workspace, workspace_argument_or_option
from dte_aar.tui import _UserError
from dte_aar.tui.queries import (
    MILESTONES,
    Reader,
    Snapshot,
    fmt_count,
    fmt_duration,
    parse_ts,
)

LOSS_POINTS_PER_CYCLE = 400
PLOTS = ("loss", "evaluation", "corpus", "curators", "stages")


def plots() -> dict[str, Any]:
    """File stem -> function drawing that figure from a snapshot."""
    return {name: globals()[f"plot_{name}"] for name in PLOTS}


def build_report(workspace: Path, out: Path | None = None) -> Path:
    """Write ``report.md`` and its PNGs into ``out`` (default ``<workspace>/report``)."""
    workspace = Path(workspace)
    out = Path(out) if out is not None else workspace / "report"
    reader = Reader(workspace, loss_buckets=LOSS_POINTS_PER_CYCLE)
    try:
        snap = reader.poll(force=True)
        while snap is not None and not snap.complete:
            snap = reader.poll()
        assert snap is not None
        reasons = top_reasons(reader)
    finally:
        reader.close()
    out.mkdir(parents=True, exist_ok=True)
    for name, plot in plots().items():
        plot(snap).savefig(out / f"{name}.png", dpi=110)
    path = out / "report.md"
    path.write_text(markdown(workspace, snap, reasons), encoding="utf-8")
    return path


def top_reasons(reader: Reader, per_curator: int = 3) -> dict[str, list[tuple[str, int]]]:
    """The most frequent rejection reasons of each curator."""
    rows = reader.conn.execute(
        "select curator, reason, count(*) as n from verdicts where keep = 0"
        " group by curator, reason order by curator, n desc"
    ).fetchall()
    reasons: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for curator, reason, n in rows:
        if len(reasons[curator]) < per_curator:
            reasons[curator].append((reason or "-", n))
    return dict(reasons)


# --------------------------------------------------------------------------- plots
def _figure(height: float = 4.0, rows: int = 1, sharex: bool = False) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=sharex, squeeze=False)[:, 0]
    return fig, axes


def _empty(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def plot_loss(snap: Snapshot) -> Any:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig, (ax,) = _figure(4.5)
    curve = snap.loss
    if not curve.x:
        _empty(ax, "training steps")
        return fig
    norm = Normalize(min(curve.layers), max(max(curve.layers), min(curve.layers) + 1))
    cmap = colormaps["viridis"]
    start = 0
    for i in range(1, len(curve.x) + 1):  # one line per run of equal depth
        if i == len(curve.x) or curve.layers[i] != curve.layers[start]:
            depth = curve.layers[start]
            ax.plot(curve.x[start:i], curve.y[start:i], color=cmap(norm(depth)), lw=1.2)
            start = i
    for x, _ in curve.growth[1:]:
        ax.axvline(x, color="0.85", lw=0.6, zorder=0)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="layers")
    ax.set(xlabel="step (all cycles)", ylabel="train loss", title="Train loss by step")
    ax.grid(alpha=0.3)
    return fig


def plot_evaluation(snap: Snapshot) -> Any:
    fig, (ax_ppl, ax_id) = _figure(6.0, rows=2, sharex=True)
    ppl, probe, ident = (snap.metric(n) for n in ("heldout_ppl", "probe_ppl", "identity_score"))
    if not (ppl or ident):
        _empty(ax_ppl, "evaluations")
        ax_id.set_axis_off()
        return fig
    _stage_spans(ax_ppl, snap)
    _stage_spans(ax_id, snap)
    if ppl:
        ax_ppl.plot(*zip(*ppl, strict=True), "o-", color="tab:blue", label="held-out")
    if probe:
        ax_ppl.plot(*zip(*probe, strict=True), "s--", color="tab:purple", label="probes")
    if ppl or probe:
        ax_ppl.set_yscale("log")
        ax_ppl.legend(loc="upper right")
    ax_ppl.set(ylabel="perplexity", title="Held-out perplexity and identity score per cycle")
    if ident:
        ax_id.plot(*zip(*ident, strict=True), "o-", color="tab:green")
    ax_id.axhline(0.5, color="0.6", ls=":", lw=1)  # chance for the probe comparison
    ax_id.set(xlabel="cycle", ylabel="identity score", ylim=(0, 1.05))
    for ax in (ax_ppl, ax_id):
        ax.grid(alpha=0.3)
    return fig


def _stage_spans(ax: Any, snap: Snapshot) -> None:
    from matplotlib import colormaps

    cmap = colormaps["Pastel1"]
    for stage, first, last in stage_runs(snap):
        ax.axvspan(first - 0.5, last + 0.5, color=cmap((stage - 1) % 9), alpha=0.35, lw=0)


def plot_corpus(snap: Snapshot) -> Any:
    fig, (ax,) = _figure(4.0)
    rows = [r for r in snap.corpus.rows if r.status == "accepted"]
    if not rows:
        _empty(ax, "corpus")
        return fig
    cycles = sorted({max(r.cycle or 0, 0) for r in rows} | {c.n for c in snap.cycles} | {0})
    order = ("seed", "import", "generated")
    sources = sorted(
        {r.source for r in rows},
        key=lambda s: (s not in order, order.index(s) if s in order else 0, s),
    )
    added = {s: defaultdict(int) for s in sources}
    for r in rows:
        added[r.source][max(r.cycle or 0, 0)] += r.count
    series = []
    for s in sources:
        total, cumulative = 0, []
        for n in cycles:
            total += added[s][n]
            cumulative.append(total)
        series.append(cumulative)
    colors = {"seed": "tab:blue", "import": "tab:orange", "generated": "tab:green"}
    palette = [colors.get(s, "tab:gray") for s in sources]
    ax.stackplot(cycles, series, labels=sources, colors=palette, alpha=0.8)
    ax.set(xlabel="cycle", ylabel="accepted samples", title="Corpus growth by source")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def plot_curators(snap: Snapshot) -> Any:
    names = snap.curator_names
    fig, axes = _figure(2.2 * max(1, len(names)) + 0.6, rows=max(1, len(names)), sharex=True)
    if not names:
        _empty(axes[0], "verdicts")
        return fig
    for ax, name in zip(axes, names, strict=True):
        tallies = [t for t in snap.curators if t.curator == name and t.cycle is not None]
        xs = [t.cycle for t in tallies]
        kept = [t.kept for t in tallies]
        ax.bar(xs, kept, color="tab:green", label="kept")
        ax.bar(xs, [t.rejected for t in tallies], bottom=kept, color="tab:red", label="rejected")
        total_k, total_r = sum(kept), sum(t.rejected for t in tallies)
        rate = total_r / max(1, total_k + total_r)
        ax.set(
            ylabel="samples", title=f"{name}: {total_k:,} kept, {total_r:,} rejected ({rate:.0%})"
        )
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
        ax.grid(alpha=0.3, axis="y")
    axes[-1].set_xlabel("cycle")
    return fig


def plot_stages(snap: Snapshot) -> Any:
    from matplotlib import colormaps

    fig, (ax,) = _figure(3.0)
    last_event: dict[int | None, str] = {e.cycle: e.ts for e in snap.events}
    spans = [  # a running cycle lasts until its latest event so far
        (c, parse_ts(c.started_at), parse_ts(c.ended_at or last_event.get(c.n) or c.started_at))
        for c in snap.cycles
    ]
    spans = [(c, a, b) for c, a, b in spans if a is not None]
    if not spans:
        _empty(ax, "cycles")
        return fig
    t0 = min(a for _, a, _ in spans)
    hours = [((b - t0).total_seconds() - (a - t0).total_seconds()) / 3600 for _, a, b in spans]
    cmap = colormaps["tab10"]
    names = snap.stage_names
    seen: set[int] = set()
    for (c, a, _), width in zip(spans, hours, strict=True):
        label = None
        if c.stage not in seen:
            seen.add(c.stage)
            label = f"{c.stage} {names[c.stage - 1] if 0 < c.stage <= len(names) else ''}"
        color = "tab:red" if c.status == "failed" else cmap((c.stage - 1) % 10)
        start = (a - t0).total_seconds() / 3600
        ax.barh(c.stage, max(width, 0.01), left=start, height=0.6, color=color, label=label)
    ax.set(
        xlabel=f"hours since {t0:%Y-%m-%d %H:%M} UTC",
        ylabel="stage",
        title="Stage timeline (one bar per cycle)",
    )
    ax.set_yticks(sorted(seen))
    ax.invert_yaxis()
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    ax.grid(alpha=0.3, axis="x")
    return fig


# --------------------------------------------------------------------------- markdown
def stage_runs(snap: Snapshot) -> list[tuple[int, int, int]]:
    """(stage, first cycle, last cycle) for each run of consecutive cycles in one stage."""
    runs: list[tuple[int, int, int]] = []
    for c in snap.cycles:
        if runs and runs[-1][0] == c.stage:
            runs[-1] = (c.stage, runs[-1][1], c.n)
        else:
            runs.append((c.stage, c.n, c.n))
    return runs


def markdown(workspace: Path, snap: Snapshot, reasons: dict[str, list[tuple[str, int]]]) -> str:
    h, corpus = snap.header, snap.corpus
    now = dt.datetime.now(dt.UTC)
    metric = {name: dict(values) for name, values in snap.per_cycle}
    last = {name: values[-1][1] for name, values in snap.per_cycle if values}
    total = max(1, corpus.real + corpus.synthetic)
    lines = [
        f"# dte report: {workspace}",
        "",
        f"Generated {now:%Y-%m-%d %H:%M} UTC from `{workspace / 'dte.db'}` (read-only).",
        "",
        "| | |",
        "|---|---|",
        f"| run | {h.run_id if h.run_id is not None else '-'} ({h.run_status}), arena "
        f"`{h.arena}`, preset `{h.preset}` |",
        f"| elapsed | {fmt_duration(h.elapsed(now))} |",
        f"| stage | {h.stage} {h.stage_name} |",
        f"| layers | {h.layers} ({h.trainable} trainable / {h.frozen} frozen) |",
        f"| cycles | {len(snap.cycles)} ({sum(c.status == 'done' for c in snap.cycles)} done);"
        f" latest {h.cycle if h.cycle is not None else '-'}: {h.phase} |",
        f"| tokens seen | {fmt_count(h.tokens)} |",
        f"| corpus | {corpus.real:,} real : {corpus.synthetic:,} synthetic "
        f"({corpus.synthetic / total:.0%} synthetic), {corpus.count(status='rejected'):,} "
        f"rejected, {corpus.count(status='pending'):,} pending |",
        f"| spend | ${corpus.spend:,.2f} |",
        f"| held-out perplexity | {_num(last.get('heldout_ppl'))} |",
        f"| identity score | {_num(last.get('identity_score'))} |",
        "",
        "## Loss",
        "",
        "![train loss by step, coloured by layer count](loss.png)",
        "",
        "## Evaluation",
        "",
        "![held-out perplexity and identity score per cycle](evaluation.png)",
        "",
        "| cycle | stage | layers | status | held-out ppl | probe ppl | identity | kept |"
        " rejected | synthetic |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in snap.cycles:
        generated = [r for r in corpus.rows if r.cycle == c.n and r.source == "generated"]
        kept = sum(r.count for r in generated if r.status == "accepted")
        rejected = sum(r.count for r in generated if r.status == "rejected")
        share = metric.get("synthetic_share", {}).get(c.n)
        lines.append(
            f"| {c.n} | {c.stage} | {c.layers} | {c.status} |"
            f" {_num(metric.get('heldout_ppl', {}).get(c.n))} |"
            f" {_num(metric.get('probe_ppl', {}).get(c.n))} |"
            f" {_num(metric.get('identity_score', {}).get(c.n))} | {kept} | {rejected} |"
            f" {'-' if share is None else f'{share:.0%}'} |"
        )
    lines += ["", "## Stage milestones", "", *milestone_table(snap, metric), ""]
    lines += [
        "## Corpus",
        "",
        "![accepted samples by source, cumulative](corpus.png)",
        "",
        "| source | accepted | rejected | pending | tokens (accepted) | cost |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for source in sorted({r.source for r in corpus.rows}):
        rows = [r for r in corpus.rows if r.source == source]
        lines.append(
            f"| {source} | {sum(r.count for r in rows if r.status == 'accepted'):,} |"
            f" {sum(r.count for r in rows if r.status == 'rejected'):,} |"
            f" {sum(r.count for r in rows if r.status == 'pending'):,} |"
            f" {sum(r.tokens for r in rows if r.status == 'accepted'):,} |"
            f" ${sum(r.cost for r in rows):,.4f} |"
        )
    lines += [
        "",
        "## Curators",
        "",
        "![kept and rejected per cycle, by curator](curators.png)",
        "",
        "| curator | kept | rejected | most frequent rejection reasons |",
        "|---|---:|---:|---|",
    ]
    for name in snap.curator_names:
        kept = sum(t.kept for t in snap.curators if t.curator == name)
        rejected = sum(t.rejected for t in snap.curators if t.curator == name)
        top = "; ".join(f"{_cell(r)} ({n})" for r, n in reasons.get(name, [])) or "-"
        lines.append(f"| {name} | {kept:,} | {rejected:,} | {top} |")
    lines += [
        "",
        "## Stages",
        "",
        "![stage timeline](stages.png)",
        "",
        "| stage | name | cycles | layers | started | ended |",
        "|---:|---|---|---|---|---|",
    ]
    by_n = {c.n: c for c in snap.cycles}
    for stage, first, last_n in stage_runs(snap):
        a, b = by_n[first], by_n[last_n]
        name = snap.stage_names[stage - 1] if 0 < stage <= len(snap.stage_names) else "-"
        lines.append(
            f"| {stage} | {name} | {first}-{last_n} | {a.layers}-{b.layers} |"
            f" {_ts(a.started_at)} | {_ts(b.ended_at) if b.status == 'done' else b.status} |"
        )
    return "\n".join(lines) + "\n"


def milestone_table(snap: Snapshot, metric: dict[str, dict[int, float]]) -> list[str]:
    """Each milestone evaluator's number per cycle, marked where it cleared its bar."""
    shown = [m for m in MILESTONES if metric.get(m)]
    if not shown:
        return ["No milestone evaluator has run yet (see `evaluators` in dte.toml)."]
    rows = [
        "| cycle | stage | layers | " + " | ".join(shown) + " |",
        "|---:|---:|---:|" + "---:|" * len(shown),
    ]
    for c in snap.cycles:
        cells = []
        for m in shown:
            value = metric[m].get(c.n)
            passed = metric.get(f"{m}_pass", {}).get(c.n)
            cells.append(_num(value) + (" pass" if passed else ""))
        rows.append(f"| {c.n} | {c.stage} | {c.layers} | " + " | ".join(cells) + " |")
    return [*rows, "", "A value marked pass cleared that evaluator's bar; a stage's gate reads"
            " its own milestone (`stages[].milestone`)."]  # fmt: skip


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _ts(value: str | None) -> str:
    parsed = parse_ts(value)
    return "-" if parsed is None else f"{parsed:%Y-%m-%d %H:%M}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:80]


# --------------------------------------------------------------------------- command
@click.command("report")
@workspace_argument_or_option
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for report.md and its PNGs (default: WORKSPACE/report).",
)
def report_command(workspace: Path | None, workspace_option: Path | None, out: Path | None) -> None:
    """Write a Markdown report with PNG plots: loss, evaluation, corpus, curators, stages."""
    from dte_aar.store import StoreError

    try:
        path = build_report(resolve_workspace(workspace, workspace_option), out)
    except StoreError as exc:
        raise _UserError(str(exc)) from None
    click.echo(f"report written: {path}  ({', '.join(f'{p}.png' for p in PLOTS)})")
