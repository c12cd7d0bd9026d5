from pathlib import Path

import pytest

from dte_aar.config import ConfigError, load_settings
from helpers import run_dte


def test_defaults_need_no_file(tmp_path: Path) -> None:
    settings = load_settings(tmp_path)
    assert settings.preset == "tiny"
    assert settings.generators == ["checkpoint"]
    assert settings.curators == ["quality", "dedup"]


def test_precedence_flag_over_env_over_file(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "dte.toml").write_text("cycles = 2\n[train]\nlr = 0.002\nbatch_size = 4\n")
    assert load_settings(tmp_path).cycles == 2
    monkeypatch.setenv("DTE_CYCLES", "4")
    monkeypatch.setenv("DTE_TRAIN__LR", "0.005")
    settings = load_settings(tmp_path)
    assert (settings.cycles, settings.train.lr, settings.train.batch_size) == (4, 0.005, 4)
    assert load_settings(tmp_path, cycles=9).cycles == 9


def test_env_list_as_json(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DTE_CURATORS", '["quality"]')
    assert load_settings(tmp_path).curators == ["quality"]


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[train]\nlr = -1\n", "dte.toml: train.lr: Input should be greater than 0 (got -1)"),
        ("[train]\nlrr = 1\n", "dte.toml: train.lrr: unknown setting"),
        ('preset = "huge"\n', "dte.toml: preset: Input should be 'tiny' or 'small'"),
        ("cycles = \n", "dte.toml: Invalid value (at line 1, column 10)"),
    ],
)
def test_bad_file_value_is_one_line_naming_the_field(tmp_path: Path, toml, expected) -> None:
    (tmp_path / "dte.toml").write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert expected in message


def test_bad_env_value_names_the_variable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DTE_TRAIN__BATCH_SIZE", "many")
    with pytest.raises(ConfigError, match=r"^DTE_TRAIN__BATCH_SIZE: train.batch_size: "):
        load_settings(tmp_path)


def test_cli_bad_config_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "dte.toml").write_text("[train]\nsteps_per_cycle = 0\n")
    result = run_dte("bootstrap", "--workspace", str(ws))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "train.steps_per_cycle" in lines[0] and "greater than 0" in lines[0]
    assert sorted(p.name for p in ws.iterdir()) == ["dte.toml"]


def test_cli_bad_env_exits_2(tmp_path: Path) -> None:
    result = run_dte("bootstrap", "-w", str(tmp_path / "new"), env={"DTE_SEED": "x"})
    assert result.returncode == 2
    assert "DTE_SEED: seed:" in result.stderr
    assert not (tmp_path / "new").exists()
