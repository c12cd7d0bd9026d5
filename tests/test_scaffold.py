import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dte_aar.cli import cli


@pytest.mark.parametrize("kind", ["generator", "curator"])
def test_plugins_new_writes_a_package_whose_test_passes(tmp_path: Path, kind: str) -> None:
    target = tmp_path / f"dte-echo-{kind}"
    result = CliRunner().invoke(
        cli, ["plugins", "new", f"echo-{kind}", "--kind", kind, "-d", str(target)]
    )
    assert result.exit_code == 0, result.output
    pyproject = (target / "pyproject.toml").read_text()
    assert f'echo-{kind} = "dte_echo_{kind}"' in pyproject
    assert "[project.entry-points.dte_aar]" in pyproject
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(target / "tests")],
        cwd=target,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


def test_plugins_new_refuses_bad_names_and_existing_dirs(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(cli, ["plugins", "new", "Bad Name", "-d", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "use lowercase letters" in bad.output
    (tmp_path / "taken").mkdir()
    taken = runner.invoke(cli, ["plugins", "new", "ok", "-d", str(tmp_path / "taken")])
    assert taken.exit_code == 2 and "already exists" in taken.output
