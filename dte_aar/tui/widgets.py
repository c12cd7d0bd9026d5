"""The views of `dte watch`. Each takes a :class:`Snapshot` in ``show()`` and redraws only
when its own slice of it changed; none of them reads the store."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Markdown, RichLog, Select, Static, Tree
from textual_plotext import PlotextPlot

from dte_aar.tui.queries import (
    Header,
    Layer,
    SampleDetail,
    SampleFilter,
    SampleRow,
    Snapshot,
    fmt_count,
    fmt_duration,
)

STATE_STYLE = {"new": "bold green", "trainable": "yellow", "frozen": "steel_blue"}
STATE_MARK = {"new": "✚", "trainable": "●", "frozen": "❄"}


# --------------------------------------------------------------------------- header
class StatusHeader(Static):
    """Run, stage, layers, cycle and phase, tokens, elapsed, daemon state."""

    def __init__(self, clock: Callable[[], dt.datetime] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._header: Header | None = None

    def show(self, snapshot: Snapshot) -> None:
        self._header = snapshot.header
        self.tick()

    def tick(self) -> None:
        """Redraw (the elapsed time moves while the run runs)."""
        h = self._header
        if h is None:
            self.update("reading the store…")
            return
        daemon_style = "green" if h.daemon.startswith("running") else "yellow"
        if h.daemon.startswith("not running"):
            daemon_style = "dim"
        top = Text.assemble(
            ("dte watch", "bold"),
            f"  {h.arena} · run {h.run_id if h.run_id is not None else '-'} ",
            (f"({h.run_status}, {h.preset})", "dim"),
            "   daemon: ",
            (h.daemon, daemon_style),
        )
        cycle = f"cycle {h.cycle}" if h.cycle is not None else "no cycle yet"
        bottom = Text.assemble(
            (f"stage {h.stage} {h.stage_name}", "bold magenta"),
            "  ·  layers ",
            (str(h.layers), "bold"),
            f" ({h.trainable} trainable / {h.frozen} frozen)  ·  ",
            (cycle, "bold"),
            f": {h.phase}  ·  tokens {fmt_count(h.tokens)}  ·  elapsed ",
            fmt_duration(h.elapsed(self.clock())),
        )
        self.update(Text("\n").join([top, bottom]))


# --------------------------------------------------------------------------- layer stack
class LayerTree(Tree[Layer]):
    """The model's blocks, grouped by the stage that grew them; the current stage open."""

    def __init__(self, **kwargs) -> None:
        super().__init__("model", **kwargs)
        self._shown: tuple[Layer, ...] | None = None
        self.show_root = True

    def show(self, snapshot: Snapshot) -> None:
        if snapshot.layers == self._shown:
            return
        self._shown = snapshot.layers
        names = snapshot.stage_names
        self.clear()
        n = len(self._shown)
        self.root.set_label(Text.assemble(("model ", "bold"), f"{n} layer{'s' * (n != 1)}"))
        current = self._shown[-1].stage if self._shown else None
        by_stage: dict[int, list[Layer]] = {}
        for layer in self._shown:
            by_stage.setdefault(layer.stage, []).append(layer)
        for stage, layers in by_stage.items():
            name = names[stage - 1] if 0 < stage <= len(names) else "?"
            span = f"L{layers[0].index}" + (f"-{layers[-1].index}" if len(layers) > 1 else "")
            node = self.root.add(
                Text.assemble((f"stage {stage} {name}", "magenta"), f"  {span}"),
                expand=stage == current,
            )
            for layer in reversed(layers):
                node.add_leaf(_layer_label(layer), data=layer)
        self.root.expand()


def _layer_label(layer: Layer) -> Text:
    style = STATE_STYLE.get(layer.state, "")
    return Text.assemble(
        (f"L{layer.index:<3}", "bold"),
        (f"{STATE_MARK.get(layer.state, '?')} {layer.state:<9}", style),
        (f" cycle {layer.added_in}", "dim"),
    )


# --------------------------------------------------------------------------- charts
class LossChart(PlotextPlot):
    """Train loss per step over every cycle, a vertical line at each growth."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._curve = None

    def show(self, snapshot: Snapshot) -> None:
        if snapshot.loss == self._curve:
            return
        self._curve = snapshot.loss
        self._draw()

    def on_resize(self) -> None:
        self._draw()

    def _draw(self) -> None:
        """One colour per depth, alternating, so every growth shows as a change of colour;
        a vertical line at each growth too while they are few enough to read."""
        curve = self._curve
        plt = self.plt
        plt.clear_figure()
        plt.title("train loss by step  (colour changes where a layer was grown)")
        if curve is not None and curve.x:
            width = max(20, self.size.width)
            if len(curve.growth) <= width // 8:
                for x, _ in curve.growth[1:]:
                    plt.vline(x, "gray")
            budget = max(64, 2 * width)  # plotext's cost grows with the points it draws
            runs = _runs(curve.layers)
            for i, (a, b) in enumerate(runs):
                n = max(2, round(budget * (b - a) / len(curve.x)))
                xs, ys = thin(curve.x[a:b], curve.y[a:b], n)
                plt.plot(xs, ys, marker="braille", color=("cyan", "orange")[i % 2])
            plt.xlabel(f"step · {len(curve.growth)} growths, {curve.layers[-1]} layers now")
        self.refresh()


def _runs(values: tuple[int, ...]) -> list[tuple[int, int]]:
    """[start, end) of each run of equal consecutive values."""
    runs, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            runs.append((start, i))
            start = i
    return runs


def thin(xs: tuple[float, ...], ys: tuple[float, ...], n: int) -> tuple[list, list]:
    """At most ``n`` points: the mean of each run of consecutive points."""
    if len(xs) <= n:
        return list(xs), list(ys)
    size = len(xs) / n
    out_x, out_y = [], []
    for i in range(n):
        a, b = int(i * size), max(int((i + 1) * size), int(i * size) + 1)
        out_x.append(xs[a])
        out_y.append(sum(ys[a:b]) / (b - a))
    return out_x, out_y


class CycleChart(PlotextPlot):
    """One per-cycle metric (held-out perplexity, identity score...)."""

    def __init__(self, metric: str, title: str, log: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self._metric, self._title, self._log = metric, title, log
        self._points: tuple | None = None

    def show(self, snapshot: Snapshot) -> None:
        points = snapshot.metric(self._metric)
        if points == self._points:
            return
        self._points = points
        plt = self.plt
        plt.clear_figure()
        plt.title(self._title + (f"  last {_short(points[-1][1])}" if points else ""))
        if points:
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            if self._log and min(ys) > 0:
                # By hand: plotext's own log scale re-applies itself on every redraw.
                ys = [math.log10(v) for v in ys]
                lo, hi = min(ys), max(ys)
                ticks = [lo + (hi - lo) * i / 4 for i in range(5)] if hi > lo else [lo]
                plt.yticks(ticks, [_short(10**t) for t in ticks])
            plt.plot(xs, ys, marker="braille", color="green")
            plt.xlabel("cycle")
        self.refresh()


def _short(value: float) -> str:
    """Axis labels: 3 significant digits, k/M for big numbers."""
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.3g}"


# --------------------------------------------------------------------------- corpus
class CorpusPanel(Static):
    """Kept vs rejected per curator per cycle, the real:synthetic mix and the spend."""

    ROWS = 8

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._key: tuple | None = None

    def show(self, snapshot: Snapshot) -> None:
        key = (snapshot.corpus, snapshot.curators, snapshot.metric("synthetic_share"))
        if key == self._key:
            return
        self._key = key
        if not snapshot.complete:
            self.update(Text("counting the corpus…", style="dim"))
            return
        corpus, curators = snapshot.corpus, snapshot.curator_names
        table = Table(box=None, padding=(0, 1), expand=True, header_style="bold")
        table.add_column("cycle", justify="right")
        table.add_column("generated", justify="right")
        table.add_column("kept", justify="right", style="green")
        table.add_column("rejected", justify="right", style="red")
        for name in curators:
            table.add_column(f"{name} ✓/✗", justify="right")
        table.add_column("synthetic", justify="right")
        share = dict(snapshot.metric("synthetic_share"))
        tally = {(t.cycle, t.curator): t for t in snapshot.curators}
        cycles = sorted({r.cycle for r in corpus.rows if r.cycle} | {c.n for c in snapshot.cycles})
        for n in cycles[-self.ROWS :]:
            rows = [r for r in corpus.rows if r.cycle == n and r.source == "generated"]
            cells = [
                str(n),
                str(sum(r.count for r in rows)),
                str(sum(r.count for r in rows if r.status == "accepted")),
                str(sum(r.count for r in rows if r.status == "rejected")),
            ]
            for name in curators:
                t = tally.get((n, name))
                cells.append(f"[green]{t.kept}[/]/[red]{t.rejected}[/]" if t else "-")
            cells.append(f"{share[n]:.0%}" if n in share else "-")
            table.add_row(*cells)
        real, synthetic = corpus.real, corpus.synthetic
        total = max(1, real + synthetic)
        pending = corpus.count(status="pending")
        tokens = sum(r.tokens for r in corpus.rows if r.status == "accepted")
        summary = Text.assemble(
            ("corpus ", "bold"),
            (f"{real:,} real", "bold"),
            " : ",
            (f"{synthetic:,} synthetic", "bold"),
            f" ({synthetic / total:.0%} synthetic)  ·  {corpus.count(status='rejected'):,}"
            f" rejected  ·  {pending:,} pending  ·  {fmt_count(tokens)} tokens  ·  spend ",
            (f"${corpus.spend:,.2f}", "bold yellow"),
        )
        self.update(_Stack(table, summary))


class _Stack:
    """Render several renderables one under the other (Rich's Group without the import)."""

    def __init__(self, *items) -> None:
        self.items = items

    def __rich_console__(self, console, options):
        yield from self.items


# --------------------------------------------------------------------------- samples
class SamplesBrowser(Vertical):
    """Filters, the matching samples, and the selected one's text with every verdict."""

    class FilterChanged(Message):
        def __init__(self, flt: SampleFilter) -> None:
            super().__init__()
            self.sample_filter = flt

    class Selected(Message):
        def __init__(self, sample_id: int) -> None:
            super().__init__()
            self.sample_id = sample_id

    KEEP = (("kept", True), ("rejected", False))

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._options_key: tuple | None = None
        self.current_filter = SampleFilter()

    def compose(self) -> ComposeResult:
        with Horizontal(id="filters"):
            yield Select[int]((), prompt="any cycle", id="f-cycle")
            yield Select[str]((), prompt="any generator", id="f-generator")
            yield Select[bool](self.KEEP, prompt="kept or rejected", id="f-keep")
            yield Select[str]((), prompt="any curator", id="f-curator")
        with Horizontal(id="samples-body"):
            table = DataTable(id="samples-table", cursor_type="row", zebra_stripes=True)
            table.add_columns("id", "cycle", "generator", "status", "tokens", "text")
            yield table
            with VerticalScroll(id="sample-detail-box"):
                yield Static("select a sample", id="sample-detail")

    def show(self, snapshot: Snapshot) -> None:
        cycles = tuple(c.n for c in snapshot.cycles)
        key = (cycles, snapshot.corpus.generators, snapshot.curator_names)
        if key == self._options_key:
            return
        self._options_key = key
        self._set_options("#f-cycle", [(f"cycle {n}", n) for n in (0, *cycles)])
        self._set_options("#f-generator", [(g, g) for g in snapshot.corpus.generators])
        self._set_options("#f-curator", [(c, c) for c in snapshot.curator_names])

    def _set_options(self, selector: str, options: list) -> None:
        select = self.query_one(selector, Select)
        value = select.value
        select.set_options(options)
        if value != Select.NULL and any(v == value for _, v in options):
            select.value = value

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()

        def value(selector: str):
            v = self.query_one(selector, Select).value
            return None if v == Select.NULL else v

        flt = SampleFilter(
            cycle=value("#f-cycle"),
            generator=value("#f-generator"),
            keep=value("#f-keep"),
            curator=value("#f-curator"),
        )
        if flt != self.current_filter:
            self.current_filter = flt
            self.post_message(self.FilterChanged(flt))

    def show_rows(self, rows: list[SampleRow]) -> None:
        """Replace the list, keeping the highlighted sample highlighted if it is still there."""
        table = self.query_one(DataTable)
        keep = None
        if table.row_count and table.cursor_row >= 0:
            keep = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        table.clear()
        for r in rows:
            style = {"accepted": "green", "rejected": "red"}.get(r.status, "yellow")
            table.add_row(
                str(r.id),
                "-" if r.cycle is None else str(r.cycle),
                r.generator or r.source,
                Text(r.status, style=style),
                "-" if r.tokens is None else str(r.tokens),
                r.text.replace("\n", " ")[:80],
                key=str(r.id),
            )
        self.border_subtitle = f"{len(rows)} shown (newest first)"
        if keep is not None and keep in table.rows:
            table.move_cursor(row=table.get_row_index(keep), animate=False)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if event.row_key is not None and event.row_key.value is not None:
            self.post_message(self.Selected(int(event.row_key.value)))

    def show_detail(self, detail: SampleDetail | None) -> None:
        box = self.query_one("#sample-detail", Static)
        if detail is None:
            box.update("sample not found")
            return
        s = detail.sample
        head = Text.assemble(
            (f"sample {s.id}", "bold"),
            f"  cycle {s.cycle}  ·  {s.source}"
            + (f" by {s.generator}" if s.generator else "")
            + (f" ({detail.model})" if detail.model else "")
            + f"  ·  {s.status}  ·  {s.tokens or 0} tokens  ·  ${s.cost or 0:.4f}",
        )
        verdicts = Table(box=None, padding=(0, 1), header_style="bold", expand=True)
        for column in ("curator", "keep", "score", "reason"):
            verdicts.add_column(column)
        for v in detail.verdicts:
            verdicts.add_row(
                v.curator,
                Text("kept" if v.keep else "rejected", style="green" if v.keep else "red"),
                "-" if v.score is None else f"{v.score:.3f}",
                v.reason,
            )
        parts = [head, Text("")]
        if detail.prompt:
            parts += [Text.assemble(("prompt: ", "dim"), detail.prompt), Text("")]
        parts += [Text(s.text), Text(""), verdicts if detail.verdicts else Text("no verdicts")]
        box.update(_Stack(*parts))


# --------------------------------------------------------------------------- events
class EventsLog(RichLog):
    """The events table as it grows (per-sample events are counted, not listed)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(max_lines=2000, wrap=False, markup=False, **kwargs)
        self.last_id = 0

    def show(self, snapshot: Snapshot) -> None:
        for e in snapshot.events:
            if e.id <= self.last_id:
                continue
            self.last_id = e.id
            style = "red" if "fail" in e.kind or "corrupt" in e.kind else ""
            self.write(
                Text.assemble(
                    (e.ts[:19].replace("T", " "), "dim"),
                    f"  c{e.cycle if e.cycle is not None else '-':<4}",
                    (f"{e.phase or '':<10}", "cyan"),
                    (f" {e.kind:<18}", style or "bold"),
                    (f" {_brief(e.data)}", "dim"),
                )
            )


def _brief(data: str, width: int = 100) -> str:
    try:
        value = json.loads(data) if data else {}
    except ValueError:
        value = data
    if isinstance(value, dict):
        text = ", ".join(f"{k}={v}" for k, v in value.items() if k != "trace")
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------- screens
HELP = """\
# dte watch

Reads the workspace's store **read-only** and refreshes about once a second.

| key | does |
|---|---|
| `p` | ask the daemon to **pause** after the current step |
| `r` | ask the daemon to **resume** |
| `s` | ask the daemon to **stop** (asks first) |
| `1` `2` `3` | overview, samples, events |
| `?` | this help |
| `q` | quit (the run goes on) |

Requests are rows in the store's `control` table; the daemon picks them up.

**Layers**: ✚ new (grown this cycle) · ● trainable · ❄ frozen, with the cycle that grew each.

**Samples**: filter by cycle, generator, kept/rejected and curator (with a curator, kept and
rejected mean *that curator's* verdict); the selected sample shows its text and every verdict
with its reason.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,q,question_mark", "dismiss", "Close"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Markdown(HELP)

    def action_dismiss(self, result: None = None) -> None:  # type: ignore[override]
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Static(Text.assemble(self.question, ("\n\n[y] yes   [n] no", "dim")))

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
