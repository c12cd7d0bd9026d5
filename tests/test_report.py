"""`dte report`: Markdown plus five PNG plots, read-only, also for an empty store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from dte_aar.report import PLOTS, build_report, report_command
from dte_aar.store import Store
from dte_aar.tui.demo import fill_store


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return fill_store(tmp_path / "ws", cycles=10, steps=80, samples_per_cycle=16, running=True)


def colours(path: Path) -> int:
    """Distinct colours in a PNG (a blank or failed plot has one or two)."""
    image = imread(path)
    pixels = (image[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    return len(np.unique(pixels, axis=0))


def test_report_writes_markdown_and_plots(store: Path, tmp_path: Path) -> None:
    digest = hashlib.sha256((store / "dte.db").read_bytes()).hexdigest()
    out = tmp_path / "report"
    path = build_report(store, out)
    assert path == out / "report.md"
    text = path.read_text()
    for name in PLOTS:
        png = out / f"{name}.png"
        assert f"]({name}.png)" in text
        assert png.stat().st_size > 10_000, name
        assert colours(png) > 20, name  # drawn, not a single-colour canvas
        height, width = imread(png).shape[:2]
        assert width >= 800 and height >= 250, (name, width, height)
    assert "| stage | 3 persona |" in text
    assert "| layers | 10 (2 trainable / 8 frozen) |" in text
    assert "| 10 | 3 | 10 | running |" in text  # the cycle still training
    assert "| dedup |" in text and "near-duplicate" in text  # top rejection reasons
    assert "| 2 | semantic | 2-8 | 2-8 |" in text  # the stage table
    assert "| cycle | stage | layers | phrase_completion |" in text  # milestones that ran
    assert "| 2 | 2 | 2 | 0.2 |" in text and "| 3 | 2 | 3 | 0.25 pass |" in text
    assert hashlib.sha256((store / "dte.db").read_bytes()).hexdigest() == digest  # read-only


def test_report_of_an_empty_store(tmp_path: Path) -> None:
    Store.open(tmp_path / "ws").close()
    path = build_report(tmp_path / "ws")
    assert path == tmp_path / "ws" / "report" / "report.md"
    for name in PLOTS:
        assert (path.parent / f"{name}.png").stat().st_size > 1_000
    assert "| cycles | 0 (0 done)" in path.read_text()
    assert "No milestone evaluator has run yet" in path.read_text()


def test_report_command(store: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(report_command, [str(store), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "report written" in result.output
    assert (tmp_path / "r" / "loss.png").exists()
    missing = CliRunner().invoke(report_command, [str(tmp_path / "nowhere")])
    assert missing.exit_code == 2
    assert "no database yet" in missing.output
