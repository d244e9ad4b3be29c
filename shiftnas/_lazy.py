"""Lazy imports for package ``__init__`` modules (PEP 562) and timm registration on demand.

`import shiftnas` stays cheap (no torch, no timm): a public name is imported from its module on
first access, and the supernets are registered with timm when timm itself gets imported.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """(__getattr__, __dir__) for `package`: `exports` maps a submodule (relative, e.g. ".cost") to
    the public names it defines; a name's value is cached in the package on first use."""
    exports = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__


class _AfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs `then()` right after the module `name` has been imported (once)."""

    def __init__(self, name: str, then: Callable[[], object]):
        self.name, self.then, self.loader = name, then, None

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # find the real module with the other finders; fire once
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__spec__.loader = module.__loader__ = self.loader
        self.loader.exec_module(module)
        self.then()


def when_imported(name: str, then: Callable[[], object]) -> None:
    """Call `then()` now if module `name` is already imported, else right after it is."""
    if name in sys.modules:
        then()
    else:
        sys.meta_path.insert(0, _AfterImport(name, then))
