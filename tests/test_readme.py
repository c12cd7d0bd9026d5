"""The README is part of the product: its config reference and test command stay true."""

from pathlib import Path

from dte_aar.config import config_reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- config-reference:start -->") + len("<!-- config-reference:start -->")
    end = readme.index("<!-- config-reference:end -->")
    assert readme[start:end].strip() == config_reference_markdown().strip(), (
        "regenerate with: dte config --reference"
    )


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    command = "python -m pytest -q"
    assert command in ci.splitlines()
    assert f"\n{command}\n" in (ROOT / "README.md").read_text()
