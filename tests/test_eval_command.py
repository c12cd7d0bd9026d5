"""`dte eval`: evaluators on any checkpoint of a real (tiny) workspace, outside the cycle."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_workspace import tiny_workspace

from dte_aar import cli as cli_module
from dte_aar import plugins as plugin_loading
from dte_aar.config import load_settings
from dte_aar.evaluate import MILESTONES, Evaluation, default_evaluators, eval_command, report
from dte_aar.hookspecs import CheckpointInfo

FAST = "phrases,concepts"

CRASHING = """
from dte_aar.hookspecs import hookimpl


class Boom:
    name = "boom"

    def evaluate(self, checkpoint, ctx):
        raise RuntimeError("the evaluator\\nbroke")


@hookimpl
def register_evaluators(register):
    register(Boom())
"""


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    return tiny_workspace(tmp_path_factory.mktemp("eval") / "ws")


def run(*args: str):
    return CliRunner().invoke(eval_command, list(args))


def metric_rows(ws: Path) -> int:
    with sqlite3.connect(ws / "dte.db") as db:
        return db.execute("select count(*) from metrics").fetchone()[0]


def test_json_reports_the_latest_checkpoint_and_its_milestones(ws: Path) -> None:
    before = metric_rows(ws)
    result = run("-w", str(ws), "--evaluators", FAST, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["checkpoint"]["cycle"] == 0 and report["checkpoint"]["layers"] == 1
    assert report["stage"]["index"] == 1 and report["stage"]["name"] == "primordial"
    metrics = report["metrics"]
    for name in ("phrase_completion", "concept_accuracy"):
        assert 0 <= metrics[name] <= 1
        assert report["passed"][name] == (metrics[name] >= metrics[f"{name}_bar"])
    assert set(report["evaluators"]) == {"phrases", "concepts"}
    assert all(e["error"] is None and e["seconds"] >= 0 for e in report["evaluators"].values())
    assert metric_rows(ws) == before  # nothing recorded without --record


def test_table_names_each_metric_with_its_bar_and_verdict(ws: Path) -> None:
    path = ws / "checkpoints" / "cycle-0000.safetensors"
    result = run(str(path), "-w", str(ws), "--evaluators", FAST)
    assert result.exit_code == 0, result.output
    out = result.output
    for name in ("phrase_completion", "phrase_choice", "concept_accuracy", "concept_chance"):
        assert name in out
    assert "0.25" in out and "0.5" in out  # the bars
    assert "pass" in out or "fail" in out
    # the default stage 1 gate reads phrase completion, which this run measured
    gate = re.search(r"stage 1 \(primordial\) gate: phrase_completion ([\d.]+) >= 0.25: (\w+)", out)
    assert gate is not None, out
    assert gate.group(2) == ("pass" if float(gate.group(1)) >= 0.25 else "fail")


def test_a_cycle_number_names_the_same_checkpoint(ws: Path) -> None:
    by_cycle = json.loads(run("0", "-w", str(ws), "--evaluators", "phrases", "--json").output)
    latest = json.loads(run("-w", str(ws), "--evaluators", "phrases", "--json").output)
    assert by_cycle["checkpoint"] == latest["checkpoint"]
    assert by_cycle["metrics"] == latest["metrics"]


def test_a_missing_checkpoint_is_one_line(ws: Path) -> None:
    result = run(str(ws / "nope.safetensors"), "-w", str(ws))
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "nope.safetensors: no such checkpoint" in result.output
    result = run("7", "-w", str(ws))
    assert result.exit_code == 2 and "cycle 7: no good checkpoint" in result.output


def test_an_unknown_evaluator_is_one_line(ws: Path) -> None:
    result = run("-w", str(ws), "--evaluators", "phrases,nosuch")
    assert result.exit_code == 2
    assert "no evaluator named 'nosuch'" in result.output
    assert result.output.strip().count("\n") == 0


def test_a_crashing_evaluator_is_reported_and_the_others_run(
    ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the real `dte` group, as the lead wires it: `--plugins-dir` adds the plugin."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "boom.py").write_text(CRASHING)
    monkeypatch.setitem(cli_module.LAZY_COMMANDS, "eval", "dte_aar.evaluate:eval_command")
    args = ["--plugins-dir", str(plugins), "eval", "-w", str(ws), "--evaluators", "boom,phrases"]
    result = CliRunner().invoke(cli_module.cli, args)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if "boom" in line and "error" in line]
    assert errors == ["error: evaluator 'boom' failed: RuntimeError: the evaluator broke"]
    assert "phrase_completion" in result.output
    report = json.loads(CliRunner().invoke(cli_module.cli, [*args, "--json"]).stdout)
    assert report["evaluators"]["boom"]["error"] == "RuntimeError: the evaluator broke"
    assert "phrase_completion" in report["metrics"]


def test_record_logs_the_metrics_under_the_checkpoints_cycle(tmp_path: Path, ws: Path) -> None:
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy)
    with sqlite3.connect(copy / "dte.db") as db:
        db.execute("update checkpoints set path = replace(path, ?, ?)", [str(ws), str(copy)])
    result = run("-w", str(copy), "--evaluators", "phrases", "--record")
    assert result.exit_code == 0, result.output
    with sqlite3.connect(copy / "dte.db") as db:
        rows = db.execute(
            "select cycle, stage, layers, name from metrics where phase = 'eval'"
        ).fetchall()
    assert {name for *_, name in rows} >= {"phrase_completion", "phrase_completion_pass"}
    assert {(c, s, n) for c, s, n, _ in rows} == {(0, 1, 1)}
    assert "recorded" in result.output


def test_a_checkpoint_from_elsewhere_evaluates_but_cannot_be_recorded(
    tmp_path: Path, ws: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for file in (ws / "checkpoints").glob("cycle-0000.*"):
        shutil.copy(file, outside / file.name)
    path = str(outside / "cycle-0000.safetensors")
    report = json.loads(run(path, "-w", str(ws), "--evaluators", "phrases", "--json").output)
    assert report["checkpoint"]["cycle"] is None and report["checkpoint"]["layers"] == 1
    assert report["stage"]["index"] == 1  # from its depth
    result = run(path, "-w", str(ws), "--evaluators", "phrases", "--record")
    assert result.exit_code == 2 and "cannot record" in result.output


def test_default_evaluators_are_the_workspaces_then_the_loaded_milestones(ws: Path) -> None:
    registry = plugin_loading.load().registry()
    settings = load_settings(ws)  # the tiny workspace configures none
    names = default_evaluators(settings, registry)
    assert names == [m for m in MILESTONES if m in registry.components["evaluator"]]
    assert {"phrases", "concepts", "persona"} <= set(names)
    both = settings.model_copy(update={"evaluators": ["heldout", "persona"]})
    names = default_evaluators(both, registry)
    assert names[:2] == ["heldout", "persona"] and names.count("persona") == 1


def test_the_stage_gate_reads_its_milestone_from_the_evaluators(ws: Path) -> None:
    settings = load_settings(ws)
    first = settings.stages[0].model_copy(
        update={"milestone": "phrase_completion", "threshold": 0.3, "higher_is_better": True}
    )
    settings = settings.model_copy(update={"stages": [first, *settings.stages[1:]]})
    info = CheckpointInfo(ws / "x.safetensors", "0" * 64, 1, 0)
    for value, passed in [(0.31, True), (0.29, False)]:
        result = Evaluation(info, 1, {"phrases": {"phrase_completion": value}})
        gate = report(result, settings)["stage"]
        assert gate["milestone"] == "phrase_completion" and gate["passed"] is passed
    assert report(Evaluation(info, 1), settings)["stage"]["passed"] is None
