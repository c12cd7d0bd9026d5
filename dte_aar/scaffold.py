"""`dte plugins new NAME`: an installable plugin package that works and tests green at once."""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

from dte_aar.config import ConfigError

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "dte-$name"
version = "0.1.0"
description = "A dte-aar $kind plugin."
requires-python = ">=3.11"
dependencies = ["dte-aar"]

[project.entry-points.dte_aar]
$name = "$module"

[tool.setuptools]
py-modules = ["$module"]
"""

GENERATOR = '''\
"""dte-$name: a dte-aar generator plugin."""

from dte_aar.hookspecs import Candidate, hookimpl


class Generator:
    name = "$component"

    def generate(self, requests, ctx):
        """Yield one Candidate per request; each is stored as soon as it is yielded."""
        for request in requests:
            text = f"I am {ctx.arena.name}. You asked: {request.prompt}"
            yield Candidate(slot=request.slot, text=text, prompt=request.prompt, model="$name")


@hookimpl
def register_generators(register):
    register(Generator())
'''

CURATOR = '''\
"""dte-$name: a dte-aar curator plugin."""

from dte_aar.hookspecs import Verdict, hookimpl


class Curator:
    name = "$component"

    def curate(self, samples, ctx):
        """One Verdict per sample: keep it or not, a score in [0, 1] and a reason."""
        for sample in samples:
            words = len(sample.text.split())
            keep = words >= 5
            yield Verdict(sample.id, keep, min(1.0, words / 50), f"{words} words")


@hookimpl
def register_curators(register):
    register(Curator())
'''

TEST_GENERATOR = """\
from types import SimpleNamespace

from dte_aar.hookspecs import GenerationRequest

import $module


def test_generator_fills_every_slot():
    requests = [
        GenerationRequest(slot=i, prompt=f"p{i}", style_example=None, seed=i) for i in range(3)
    ]
    ctx = SimpleNamespace(arena=SimpleNamespace(name="Deep Tree Echo"))
    out = list($module.Generator().generate(requests, ctx))
    assert [c.slot for c in out] == [0, 1, 2]
    assert all("p" in c.prompt for c in out)
"""

TEST_CURATOR = """\
from dte_aar.hookspecs import Sample

import $module


def sample(i, text):
    return Sample(id=i, text=text, source="generated", generator="g", prompt=None, text_hash=str(i))


def test_curator_keeps_long_texts_and_rejects_short_ones():
    samples = [sample(1, "too short"), sample(2, "I am a tree of echoes and membranes")]
    out = list($module.Curator().curate(samples, None))
    assert [v.keep for v in out] == [False, True]
    assert all(v.reason for v in out)
"""


def scaffold(name: str, kind: str, directory: Path | None = None) -> Path:
    """Write the package; refuse to overwrite an existing directory."""
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
        raise ConfigError(f"plugin name {name!r}: use lowercase letters, digits, - and _")
    module = "dte_" + name.replace("-", "_")
    target = Path(directory) if directory else Path(f"dte-{name}")
    if target.exists():
        raise ConfigError(f"{target}: already exists; choose another --directory")
    values = {"name": name, "module": module, "component": name.replace("-", "_"), "kind": kind}
    body, test = (GENERATOR, TEST_GENERATOR) if kind == "generator" else (CURATOR, TEST_CURATOR)
    (target / "tests").mkdir(parents=True)
    files = {
        "pyproject.toml": PYPROJECT,
        f"{module}.py": body,
        f"tests/test_{module}.py": test,
        "README.md": f"# dte-$name\n\nA dte-aar {kind} plugin. Install: `pip install -e .`\n",
    }
    for relative, template in files.items():
        (target / relative).write_text(Template(template).substitute(values), encoding="utf-8")
    return target
