"""Plugin manager: entry points loaded one at a time, a plugins dir, an allow-list, isolation.

Built-ins ship as entry points of this distribution, so they load (and can be left out)
exactly like third-party plugins. A plugin that fails to import, or raises inside a hook, is
reported with its name and skipped; ``DTE_STRICT_PLUGINS=1`` turns that into a hard error.

Environment:
- ``DTE_LOAD_PLUGINS=a,b``: load only these plugins (an empty value loads none).
- ``DTE_BLOCK_PLUGINS=a,b``: never load these.
- ``DTE_STRICT_PLUGINS=1``: any plugin failure is fatal.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from dte_aar import hookspecs

HOOK_KINDS = {
    "register_generators": "generator",
    "register_curators": "curator",
    "register_trainers": "trainer",
    "register_evaluators": "evaluator",
}


class PluginError(Exception):
    """A plugin failed and strict mode is on (or a required component is missing)."""


@dataclass
class PluginFailure:
    plugin: str
    where: str  # "import" or the hook's name
    error: str


@dataclass
class Registry:
    """Components handed over by the register_* hooks, by kind and name."""

    components: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {kind: {} for kind in HOOK_KINDS.values()}
    )
    owners: dict[tuple[str, str], str] = field(default_factory=dict)

    def get(self, kind: str, name: str) -> Any:
        try:
            return self.components[kind][name]
        except KeyError:
            known = ", ".join(sorted(self.components[kind])) or "none"
            raise PluginError(f"no {kind} named {name!r} is loaded (loaded: {known})") from None


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def strict() -> bool:
    return os.environ.get("DTE_STRICT_PLUGINS", "").lower() in {"1", "true", "yes", "on"}


class PluginManager:
    """Wraps pluggy with per-plugin isolation and bookkeeping for `dte plugins`."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self.versions: dict[str, str] = {}
        self.warn: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr)
        self._registry: Registry | None = None

    # ----------------------------------------------------------------- loading
    def load_entrypoints(self) -> None:
        allow = _env_list("DTE_LOAD_PLUGINS")
        block = set(_env_list("DTE_BLOCK_PLUGINS") or [])
        for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT):
            if (allow is not None and ep.name not in allow) or ep.name in block:
                continue
            if self.pm.get_plugin(ep.name) is not None:
                continue
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                self._fail(ep.name, "import", exc)
                continue
            self.register(module, ep.name, ep.dist.version if ep.dist else "")

    def load_directory(self, directory: Path) -> None:
        """Load every loose ``*.py`` in ``directory`` as a plugin named after the file."""
        allow = _env_list("DTE_LOAD_PLUGINS")
        for path in sorted(Path(directory).glob("*.py")):
            name = path.stem
            if allow is not None and name not in allow:
                continue
            try:
                spec = importlib.util.spec_from_file_location(f"dte_aar_local_{name}", path)
                assert spec and spec.loader
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            except Exception as exc:
                self._fail(name, "import", exc)
                continue
            self.register(module, name, f"file:{path}")

    def register(self, plugin: ModuleType | object, name: str, version: str = "") -> None:
        """Register a module or object; tests use this to add plugins directly."""
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # e.g. a hookimpl with an unknown hook name
            self._fail(name, "register", exc)
            return
        self.versions[name] = version
        self._registry = None

    def _fail(self, plugin: str, where: str, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}"
        self.failures.append(PluginFailure(plugin, where, message))
        if strict():
            raise PluginError(f"plugin {plugin!r} failed in {where}: {message}") from exc
        self.warn(f"warning: plugin {plugin!r} failed in {where} and was skipped: {message}")

    # ----------------------------------------------------------------- calling
    def call_each(self, hook: str, **kwargs: Any) -> None:
        """Call ``hook`` on every plugin separately, so one raising cannot stop the rest."""
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception as exc:
                self._fail(impl.plugin_name, hook, exc)
                if os.environ.get("DTE_DEBUG"):
                    traceback.print_exc()

    def registry(self) -> Registry:
        """Collect every registered component once; later calls reuse the result."""
        if self._registry is not None:
            return self._registry
        registry = Registry()
        for hook, kind in HOOK_KINDS.items():
            for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
                owner = impl.plugin_name

                def register(component: Any, kind: str = kind, owner: str = owner) -> None:
                    name = getattr(component, "name", None)
                    if not isinstance(name, str) or not name:
                        raise TypeError(f"{kind} {component!r} has no string `name`")
                    registry.components[kind][name] = component
                    registry.owners[(kind, name)] = owner

                try:
                    impl.function(register=register)
                except Exception as exc:
                    self._fail(owner, hook, exc)
        self._registry = registry
        return registry

    def emit(self, event: hookspecs.Event) -> None:
        self.call_each("on_event", event=event)

    # ----------------------------------------------------------------- listing
    def describe(self) -> Iterator[dict[str, Any]]:
        """One row per loaded plugin: name, version, hooks, components."""
        registry = self.registry()
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda item: item[0]):
            if plugin is None:
                continue
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            components = sorted(
                f"{kind}:{comp}" for (kind, comp), owner in registry.owners.items() if owner == name
            )
            yield {
                "name": name,
                "version": self.versions.get(name, ""),
                "hooks": hooks,
                "components": components,
            }


def load(plugins_dir: Path | None = None) -> PluginManager:
    """The manager the CLI and daemon use: entry points, then an optional plugins dir."""
    manager = PluginManager()
    manager.load_entrypoints()
    if plugins_dir is not None:
        manager.load_directory(plugins_dir)
    return manager
