from pathlib import Path

from dte_aar.config import StageSettings, default_stages
from dte_aar.stages import History, decide
from dte_aar.store import Store
from helpers import FAST_CONFIG, run_dte


def stages() -> list[StageSettings]:
    return [
        StageSettings(name="one", last_layer=1, max_cycles=2, milestone="ppl", threshold=100),
        StageSettings(name="two", last_layer=3, max_cycles=2, milestone="score", threshold=0.6,
                      higher_is_better=True),
        StageSettings(name="end", max_cycles=2, milestone="ppl", threshold=10, unfreeze_all=True),
    ]  # fmt: skip


def test_first_cycle_builds_one_block() -> None:
    d = decide(stages(), 0, History([], None), per_cycle=1)
    assert (d.stage, d.grow, d.finished) == (1, 1, False)


def test_gate_holds_then_budget_advances() -> None:
    held = decide(stages(), 1, History([(1, 1)], 150.0), per_cycle=1)
    assert (held.stage, held.grow) == (1, 0) and "holding 1 layers" in held.note
    spent = decide(stages(), 1, History([(1, 1), (1, 1)], 150.0), per_cycle=1)
    assert (spent.stage, spent.grow, spent.advanced) == (2, 1, True)
    assert "cycle budget spent" in spent.note and "entering two" in spent.note


def test_milestone_passes_and_growth_respects_pairs_and_stage_end() -> None:
    passed = decide(stages(), 1, History([(1, 1)], 80.0), per_cycle=2)
    assert (passed.stage, passed.grow) == (2, 2) and "milestone passed (ppl 80" in passed.note
    capped = decide(stages(), 2, History([(1, 1), (2, 2)], None), per_cycle=2)
    assert (capped.stage, capped.grow) == (2, 1)  # never past the stage's last layer


def test_higher_is_better_and_open_ended_last_stage() -> None:
    low = decide(stages(), 3, History([(2, 3)], 0.5), per_cycle=1)
    assert (low.stage, low.grow) == (2, 0)
    high = decide(stages(), 3, History([(2, 3)], 0.7), per_cycle=1)
    assert (high.stage, high.grow, high.finished) == (3, 0, False)
    refine = decide(stages(), 3, History([(2, 3), (3, 3)], 50.0), per_cycle=1)
    assert (refine.stage, refine.grow, refine.finished) == (3, 0, False)
    done = decide(stages(), 3, History([(2, 3), (3, 3), (3, 3)], 50.0), per_cycle=1)
    assert done.finished and "all stages complete" in done.note


def test_default_stages_follow_the_seed() -> None:
    defaults = default_stages()
    assert [s.name for s in defaults] == [
        "primordial", "semantic", "persona", "meta-cognitive", "refinement",
    ]  # fmt: skip
    assert [s.last_layer for s in defaults] == [1, 8, 16, 24, None]
    assert "persona" in defaults[2].losses and "coherence" in defaults[3].losses
    assert defaults[4].unfreeze_all


STAGED = """
[[stages]]
name = "one"
last_layer = 1
max_cycles = 2
milestone = "heldout_ppl"
threshold = 0.5

[[stages]]
name = "two"
last_layer = 2
max_cycles = 1
milestone = "identity_score"
threshold = 0.0
higher_is_better = true

[[stages]]
name = "end"
max_cycles = 1
milestone = "heldout_ppl"
threshold = 0.0
unfreeze_all = true
"""


def test_stage_gates_drive_a_real_run(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "dte.toml").write_text(FAST_CONFIG.replace("cycles = 3", "cycles = 9") + STAGED)
    result = run_dte("bootstrap", "-w", str(ws))
    assert result.returncode == 0, result.stderr
    assert "growth complete" in result.stderr
    with Store.open(ws, readonly=True) as store:
        cycles = store.cycles()
        assert [(c["stage"], c["layers"]) for c in cycles] == [(1, 1), (1, 1), (2, 2), (3, 2)]
        notes = [
            row[0]
            for row in store.db.execute(
                "select json_extract(data, '$.note') from events "
                "where kind in ('stage_advanced', 'stage_decided', 'growth_complete') order by id"
            )
        ]
    assert "holding 1 layers" in notes[1]
    assert "cycle budget spent" in notes[2] and "entering two" in notes[2]
    assert "milestone passed (identity_score" in notes[3] and "entering end" in notes[3]
    assert "all stages complete" in notes[4]
