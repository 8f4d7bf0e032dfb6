"""The module paths of the flat 0.1 layout, kept importable (CHANGELOG.md lists every move).

`import adaptrec_prompts.modules` and `from adaptrec_prompts.modules import AdaptRec` still work and give the
objects the new paths give (`adaptrec_prompts.programs.adaptrec.AdaptRec`), with a `DeprecationWarning` that
names the new path. No module file is left at an old path: a finder on `sys.meta_path` answers exactly the
old names below and nothing else.

- A module that moved whole is the same module object under both names (monkeypatching either patches it).
- A module whose code now lives in several modules is a read-only view: an attribute is looked up in each
  of its new modules in turn.
- Three old modules gave their name to the package that now holds their code (`evaluation`, `cli`,
  `experiments`): those packages answer the old module's other names, with the same warning
  (`former_attribute`, called by the packages' `__getattr__`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys
import types
import warnings

P = "adaptrec_prompts."

# old module path -> the module that holds its code now, or the modules (in lookup order) it was split into
MOVED: dict[str, str | tuple[str, ...]] = {
    # shared utilities
    P + "devices": P + "utils.devices",
    P + "options": (P + "utils.options", P + "cli.app"),  # number_type: the command line's argparse type
    P + "progress": P + "utils.progress",
    P + "testing": P + "utils.testing",
    P + "timing": P + "utils.timing",
    # data
    P + "prepare": P + "data.prepare",
    P + "protocol": P + "data.protocol",
    P + "render": P + "data.render",
    P + "schema": P + "data.schema",
    # Stage 1: retrieval
    P + "embed": P + "retrieval.embedders",
    P + "retriever": P + "retrieval.index",
    P + "neighbors": (P + "retrieval.neighbors", P + "retrieval.embedders", P + "retrieval.index"),
    P + "live": (P + "retrieval.live", P + "programs.adaptrec"),  # UserRetriever; LiveAdaptRec, from_index
    # Stages 2 and 3: programs
    P + "adapters": P + "programs.chat_adapters",
    P + "modules": (P + "programs.adaptrec", P + "programs.selector", P + "programs.recommender",
                    P + "programs.saving", P + "programs.chat_adapters", P + "programs.scoring", P + "data.render"),
    P + "optimize": P + "programs.optimize",
    P + "parsing": P + "programs.parsing",
    P + "scoring": P + "programs.scoring",
    P + "signatures": P + "programs.signatures",
    # backends
    P + "lora": P + "backends.lora",
    # evaluation
    P + "baselines": P + "evaluation.baselines",
    P + "baselines.demo_match": P + "evaluation.baselines.demo_match",
    P + "baselines.sasrec": P + "evaluation.baselines.sasrec",
    P + "metrics": P + "evaluation.metrics",
    P + "report": (P + "evaluation.report", P + "cli.report"),  # main: eval/report.py's command line
    P + "runs": (P + "evaluation.runs", P + "evaluation.results"),
    # fine-tuning
    P + "sft_data": P + "finetune.rows",
    P + "sft_experiment": P + "finetune.experiment",
    P + "training": (P + "finetune.trainer", P + "finetune.losses", P + "finetune.callbacks"),
    # command line and drivers
    P + "commands": P + "cli.commands",
    P + "config_file": P + "cli.config_file",
    P + "pipeline": P + "experiments.pipeline",
}

# an old module whose name is now the package holding its code -> the modules its other names live in
FORMER_MODULES: dict[str, tuple[str, ...]] = {
    P + "cli": (P + "cli.app",),
    P + "evaluation": (P + "evaluation.harness", P + "evaluation.results"),
    P + "experiments": (P + "experiments.experiment",),
}


def _targets(old: str) -> tuple[str, ...]:
    new = MOVED[old]
    return (new,) if isinstance(new, str) else new


_HERE = os.path.dirname(os.path.abspath(__file__))
_INTERNAL = (os.path.join(os.path.dirname(importlib.__file__), "__init__.py"), os.path.abspath(__file__),
             os.path.join(_HERE, "_lazy.py"))


def _bootstrap(frame) -> bool:
    """A frame of the import system itself, which `warnings` skips when it counts `stacklevel`."""
    name = frame.f_code.co_filename
    return "importlib" in name and "_bootstrap" in name


def _warn(message: str) -> None:
    """A DeprecationWarning attributed to the line that imported the old path (not to the import system)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and (_bootstrap(frame) or frame.f_code.co_filename in _INTERNAL):
        frame = frame.f_back
        if frame is not None and not _bootstrap(frame):
            level += 1
    warnings.warn(message, DeprecationWarning, stacklevel=level)


class _SplitModule(types.ModuleType):
    """An old module whose names now live in several modules: attributes are looked up in each in turn."""

    def __init__(self, name: str, targets: tuple[str, ...]):
        super().__init__(name, f"Moved: {name} is now {', '.join(targets)} (see CHANGELOG.md).")
        self.__targets = targets

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        for target in self.__targets:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r} (its code moved to "
                             f"{', '.join(self.__targets)})")

    def __dir__(self) -> list[str]:
        names = set(super().__dir__())
        for target in self.__targets:
            names |= {n for n in dir(importlib.import_module(target)) if not n.startswith("__")}
        return sorted(names)


class OldPathFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers the old module paths in `MOVED` (and no other name) with the modules that hold their code."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        targets = _targets(spec.name)
        _warn(f"{spec.name} moved to {' and '.join(targets)}; import it from there (the old path will be removed "
              "in a later version; CHANGELOG.md lists every move)")
        if len(targets) > 1:
            return _SplitModule(spec.name, targets)
        module = importlib.import_module(targets[0])
        self._specs[spec.name] = module.__spec__  # the import system sets __spec__ to the old name's: undone below
        return module

    def exec_module(self, module):
        spec = self._specs.pop(module.__spec__.name, None)
        if spec is not None:
            module.__spec__ = spec

    _specs: dict = {}


def former_attribute(package: str, name: str):
    """`package.name` for a name the package does not export: a name of the old module of the same path
    (`FORMER_MODULES`), with a DeprecationWarning; otherwise AttributeError, as for any module."""
    targets = FORMER_MODULES.get(package, ())
    if targets and not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}") is None:
        for target in targets:
            module = importlib.import_module(target)
            if hasattr(module, name):
                _warn(f"{package}.{name} moved to {target}.{name}; import it from there (CHANGELOG.md)")
                return getattr(module, name)
    raise AttributeError(f"module {package!r} has no attribute {name!r}")


def install() -> None:
    """Put the finder first on `sys.meta_path` (once): an old path must never reach the path finder, which
    would load a second copy of a module from an aliased package's folder."""
    if not any(isinstance(f, OldPathFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, OldPathFinder())
