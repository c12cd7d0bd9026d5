import tomllib
from pathlib import Path

from click.testing import CliRunner

from dte_aar.cli import cli


def test_init_writes_a_valid_commented_config_and_database(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    result = CliRunner().invoke(cli, ["init", "-w", str(ws)])
    assert result.exit_code == 0, result.output
    text = (ws / "dte.toml").read_text()
    assert "# [train]" in text and "# steps_per_cycle = 120" in text
    assert tomllib.loads(text) == {}  # everything commented: defaults apply
    uncommented = "\n".join(line[2:].split("  #")[0] for line in text.splitlines() if " = " in line)
    assert "lr = 0.003" in uncommented
    assert (ws / "dte.db").exists()
    config = CliRunner().invoke(cli, ["config", "-w", str(ws)])
    assert '"preset": "tiny"' in config.output


def test_status_without_database_is_one_clear_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["status", "-w", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "no database yet" in result.output
    assert not (tmp_path / "none").exists()


def test_unknown_component_is_reported_before_any_work(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "dte.toml").write_text('curators = ["quality", "nope"]\n')
    result = CliRunner().invoke(cli, ["bootstrap", "-w", str(ws)])
    assert result.exit_code == 2
    assert "no curator named 'nope' is loaded" in result.output
    assert not (ws / "dte.db").exists()


def test_bad_plugin_config_is_reported_before_any_work(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "dte.toml").write_text("[plugins.quality]\nmin_chars = -3\n")
    result = CliRunner().invoke(cli, ["bootstrap", "-w", str(ws)])
    assert result.exit_code == 2
    assert "plugins.quality.min_chars: Input should be greater than or equal to 1" in result.output
    assert not (ws / "dte.db").exists()


def test_every_lazily_loaded_command_is_listed_and_answers_help() -> None:
    from dte_aar.cli import LAZY_COMMANDS

    runner = CliRunner()
    listing = runner.invoke(cli, ["--help"])
    assert listing.exit_code == 0
    for name in ("daemon", "eval", "plan", "ablate", "serve", "finetune"):
        assert name in LAZY_COMMANDS and f"  {name} " in listing.output
        shown = runner.invoke(cli, [name, "--help"])
        assert shown.exit_code == 0, (name, shown.output)
        assert "Usage:" in shown.output
    for sub in ("start", "stop", "status", "logs", "pause", "resume"):
        assert runner.invoke(cli, ["daemon", sub, "--help"]).exit_code == 0
