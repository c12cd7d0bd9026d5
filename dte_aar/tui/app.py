"""`dte watch`: the app. Its one piece of state is ``snapshot``; every view redraws from it.

A timer asks a thread worker to poll the store about once a second; the worker returns a new
snapshot only when something changed, so an idle store costs one pragma and one stat a second,
and a busy one never blocks the screen.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import Footer, TabbedContent, TabPane

from dte_aar.store import StoreError
from dte_aar.tui.queries import Reader, SampleFilter, Snapshot, request_control
from dte_aar.tui.widgets import (
    ConfirmScreen,
    CorpusPanel,
    CycleChart,
    EventsLog,
    HelpScreen,
    LayerTree,
    LossChart,
    SamplesBrowser,
    StatusHeader,
)


class WatchApp(App[None]):
    CSS_PATH = Path(__file__).with_name("app.tcss")
    TITLE = "dte watch"
    BINDINGS = [
        Binding("p", "control('pause')", "Pause"),
        Binding("r", "control('resume')", "Resume"),
        Binding("s", "stop", "Stop"),
        Binding("1", "tab('overview')", "Overview", show=False),
        Binding("2", "tab('samples')", "Samples", show=False),
        Binding("3", "tab('events')", "Events", show=False),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    snapshot: reactive[Snapshot | None] = reactive(None, always_update=True)

    def __init__(
        self,
        workspace: Path,
        reader: Reader | None = None,
        interval: float = 1.0,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        super().__init__()
        self.workspace = Path(workspace)
        self.reader = reader
        self.interval = interval
        self.clock = clock
        self.polling = False
        self.polls = 0  # completed polls (tests and the benchmark wait on these)
        self.corpus_key: tuple | None = None
        self.samples_stale = True  # reload the samples list when its tab shows
        self.first_paint: float | None = None  # perf_counter() of the first snapshot shown
        self.complete_paint: float | None = None  # ... and of the first complete one

    def compose(self) -> ComposeResult:
        yield StatusHeader(clock=self.clock, id="status")
        with TabbedContent(initial="overview"):
            with TabPane("Overview", id="overview"), Horizontal():
                yield LayerTree(id="layers")
                with Vertical(id="charts"):
                    yield LossChart(id="loss")
                    with Horizontal(id="cycle-charts"):
                        yield CycleChart("heldout_ppl", "held-out perplexity", log=True)
                        yield CycleChart("identity_score", "identity score")
                    yield CorpusPanel(id="corpus")
            with TabPane("Samples", id="samples"):
                yield SamplesBrowser(id="browser")
            with TabPane("Events", id="events"):
                yield EventsLog(id="log")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(LayerTree).border_title = "layer stack"
        self.query_one(CorpusPanel).border_title = "corpus"
        self.query_one(SamplesBrowser).border_title = "samples"
        self.poll()
        self.set_interval(self.interval, self.poll)
        self.set_interval(1.0, self.query_one(StatusHeader).tick)

    def on_unmount(self) -> None:
        if self.reader is not None:
            self.reader.close()

    # ------------------------------------------------------------------ state
    def poll(self, force: bool = False) -> None:
        """Start a poll unless one is running (a slow disk never piles them up)."""
        if not self.polling:
            self.polling = True
            self._poll(force)

    @work(thread=True, group="poll")
    def _poll(self, force: bool) -> None:
        snapshot, error = None, None
        try:
            if self.reader is None:
                self.reader = Reader(self.workspace)
            snapshot = self.reader.poll(force=force)
            if snapshot is not None and not snapshot.complete:
                self.call_from_thread(self._apply, snapshot)  # paint what is cheap first
                snapshot = self.reader.poll()
        except Exception as exc:  # noqa: BLE001 - shown, and the next poll tries again
            error = f"{type(exc).__name__}: {exc}"
        self.call_from_thread(self._polled, snapshot, error)

    def _polled(self, snapshot: Snapshot | None, error: str | None) -> None:
        self.polling = False
        self.polls += 1
        if error:
            self.notify(error, title="store", severity="warning")
        if snapshot is not None:
            self._apply(snapshot)

    def _apply(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        if self.first_paint is None:
            self.first_paint = time.perf_counter()
        if snapshot.complete and self.complete_paint is None:
            self.complete_paint = time.perf_counter()

    def watch_snapshot(self, snapshot: Snapshot | None) -> None:
        if snapshot is None:
            return
        for view in self.query("StatusHeader, LayerTree, LossChart, CycleChart, CorpusPanel"):
            view.show(snapshot)  # type: ignore[attr-defined]
        self.query_one(EventsLog).show(snapshot)
        browser = self.query_one(SamplesBrowser)
        browser.show(snapshot)
        corpus_key = (snapshot.corpus, snapshot.curators)
        if corpus_key != self.corpus_key:  # samples or verdicts changed: the list is stale
            self.corpus_key = corpus_key
            self.samples_stale = True
        if self.samples_stale and self.query_one(TabbedContent).active == "samples":
            self.samples_stale = False
            self.load_samples(browser.current_filter)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "samples" and self.samples_stale:
            self.samples_stale = False
            self.load_samples(self.query_one(SamplesBrowser).current_filter)

    # ------------------------------------------------------------------ samples browser
    def on_samples_browser_filter_changed(self, message: SamplesBrowser.FilterChanged) -> None:
        self.load_samples(message.sample_filter)

    def on_samples_browser_selected(self, message: SamplesBrowser.Selected) -> None:
        self.load_detail(message.sample_id)

    @work(thread=True, exclusive=True, group="samples")
    def load_samples(self, flt: SampleFilter) -> None:
        if self.reader is None:
            return
        rows = self.reader.samples(flt)
        browser = self.query_one(SamplesBrowser)
        self.call_from_thread(browser.show_rows, rows)

    @work(thread=True, exclusive=True, group="detail")
    def load_detail(self, sample_id: int) -> None:
        if self.reader is None:
            return
        detail = self.reader.sample_detail(sample_id)
        browser = self.query_one(SamplesBrowser)
        self.call_from_thread(browser.show_detail, detail)

    # ------------------------------------------------------------------ actions
    def action_control(self, command: str) -> None:
        self.send_control(command)

    def action_stop(self) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.send_control("stop")

        self.push_screen(
            ConfirmScreen("Stop the daemon? It finishes the current step and checkpoints."),
            answered,
        )

    @work(thread=True, group="control")
    def send_control(self, command: str) -> None:
        """One row in ``control`` (a short write of its own, off the UI thread)."""
        try:
            request_control(self.workspace, command)
        except (sqlite3.Error, StoreError) as exc:
            self.call_from_thread(
                self.notify, f"{command}: {exc}", title="control", severity="error"
            )
            return
        self.call_from_thread(self.notify, f"{command} requested", title="daemon")
        self.call_from_thread(self.poll)

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def action_help(self) -> None:
        self.push_screen(HelpScreen())


def run(workspace: Path, interval: float = 1.0) -> None:
    """Open the store (a missing one is a clean error) and run the app."""
    WatchApp(workspace, reader=Reader(workspace), interval=interval).run()
