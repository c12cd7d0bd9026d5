from pathlib import Path

import pytest
from click.testing import CliRunner

from dte_aar.cli import cli
from dte_aar.hookspecs import Verdict, hookimpl
from dte_aar.plugins import PluginError, PluginManager, load

BUILTINS = {"checkpoint", "quality", "dedup", "progressive", "heldout"}


def names(manager: PluginManager) -> set[str]:
    return {row["name"] for row in manager.describe()}


def test_builtins_load_through_entry_points() -> None:
    manager = load()
    assert names(manager) >= BUILTINS
    assert not manager.failures
    registry = manager.registry()
    assert {"quality", "dedup"} <= set(registry.components["curator"])
    assert "progressive" in registry.components["trainer"]
    assert registry.owners[("curator", "quality")] == "quality"


def test_allow_list_loads_only_named(monkeypatch) -> None:
    monkeypatch.setenv("DTE_LOAD_PLUGINS", "quality, dedup")
    assert names(load()) == {"quality", "dedup"}
    monkeypatch.setenv("DTE_LOAD_PLUGINS", "")
    assert names(load()) == set()


def test_block_list_disables_by_name(monkeypatch) -> None:
    monkeypatch.setenv("DTE_BLOCK_PLUGINS", "dedup")
    loaded = names(load())
    assert "dedup" not in loaded and "quality" in loaded


def write_plugins(directory: Path) -> None:
    directory.mkdir(exist_ok=True)
    (directory / "broken.py").write_text("import does_not_exist_anywhere\n")
    (directory / "good.py").write_text(
        "from dte_aar.hookspecs import Verdict, hookimpl\n"
        "class Always:\n"
        "    name = 'always'\n"
        "    def curate(self, samples, ctx):\n"
        "        return [Verdict(s.id, True, 1.0, 'always') for s in samples]\n"
        "@hookimpl\n"
        "def register_curators(register):\n"
        "    register(Always())\n"
    )


def test_broken_plugin_is_reported_and_skipped(tmp_path: Path) -> None:
    write_plugins(tmp_path / "p")
    warnings: list[str] = []
    manager = PluginManager()
    manager.warn = warnings.append
    manager.load_entrypoints()
    manager.load_directory(tmp_path / "p")
    assert "good" in names(manager) and "broken" not in names(manager)
    assert [(f.plugin, f.where) for f in manager.failures] == [("broken", "import")]
    assert "does_not_exist_anywhere" in manager.failures[0].error
    assert any("'broken'" in w for w in warnings)
    assert "always" in manager.registry().components["curator"]


def test_strict_mode_makes_failure_fatal(tmp_path: Path, monkeypatch) -> None:
    write_plugins(tmp_path / "p")
    monkeypatch.setenv("DTE_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="plugin 'broken' failed in import"):
        load(tmp_path / "p")


class Raises:
    @hookimpl
    def register_curators(self, register):
        raise RuntimeError("boom in hook")

    @hookimpl
    def on_event(self, event):
        raise RuntimeError("boom in observer")


class Fine:
    seen: list = []

    @hookimpl
    def register_curators(self, register):
        class C:
            name = "fine"

            def curate(self, samples, ctx):
                return [Verdict(s.id, True, 1.0, "") for s in samples]

        register(C())

    @hookimpl
    def on_event(self, event):
        self.seen.append(event.kind)


def test_raising_hook_is_isolated_per_plugin() -> None:
    from dte_aar.hookspecs import Event

    manager = PluginManager()
    manager.warn = lambda message: None
    manager.register(Raises(), "raises")
    fine = Fine()
    manager.register(fine, "fine")
    assert "fine" in manager.registry().components["curator"]
    manager.emit(Event("hello"))
    assert fine.seen == ["hello"]
    assert {(f.plugin, f.where) for f in manager.failures} == {
        ("raises", "register_curators"),
        ("raises", "on_event"),
    }


def test_dte_plugins_lists_name_version_hooks(tmp_path: Path) -> None:
    write_plugins(tmp_path / "p")
    result = CliRunner().invoke(cli, ["--plugins-dir", str(tmp_path / "p"), "plugins"])
    assert result.exit_code == 0, result.output
    out = result.output
    for name in BUILTINS | {"good"}:
        assert name in out
    assert "0.1.0" in out and "register_curators" in out and "curator:always" in out
    assert "broken" in out  # reported as failed
