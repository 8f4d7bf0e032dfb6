"""How the package hangs together: every module imports on its own, and the library never reaches up into
the command line (`cli.py` parses, `commands.py` translates arguments into library calls; nothing below them
takes an argparse namespace or re-enters `cli.main`)."""

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import adaptrec_prompts

PACKAGE = Path(adaptrec_prompts.__file__).parent
# `python -m` entry points (cli/__main__.py) run the command when imported: not modules to import
MODULES = sorted(m.name for m in pkgutil.walk_packages(adaptrec_prompts.__path__, "adaptrec_prompts.")
                 if not m.name.endswith(".__main__"))
CLI_LAYER = {m for m in MODULES if m == "adaptrec_prompts.cli" or m.startswith("adaptrec_prompts.cli.")}

# In a fresh interpreter: import one module first, before anything else of the package. An import cycle
# (a imports b at module level, b imports a) fails in one of the two orders only, so every module gets its
# own turn. A missing optional dependency (a package outside adaptrec_prompts) skips the module.
PROBE = """
import importlib, sys
try:
    importlib.import_module(sys.argv[1])
except ModuleNotFoundError as exc:
    if exc.name and exc.name.split(".")[0] != "adaptrec_prompts":
        print("MISSING", exc.name)
        raise SystemExit(0)
    raise
"""


def _source(name: str) -> Path:
    path = PACKAGE.joinpath(*name.split(".")[1:])
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def test_the_walk_finds_the_package():
    assert {"adaptrec_prompts.backends.gemma", "adaptrec_prompts.backends.api", "adaptrec_prompts.evaluation.harness",
            "adaptrec_prompts.evaluation.runs", "adaptrec_prompts.cli.app"} <= set(MODULES)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports_alone_in_a_fresh_interpreter(name):
    proc = subprocess.run([sys.executable, "-c", PROBE, name], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"`import {name}` in a fresh interpreter failed:\n{proc.stderr[-3000:]}"
    if proc.stdout.startswith("MISSING"):
        pytest.skip(f"{name} needs the optional package {proc.stdout.split()[1]}")


LIBRARY = [m for m in MODULES if m not in CLI_LAYER]


@pytest.mark.parametrize("name", LIBRARY)
def test_the_library_takes_no_argparse_namespace_and_never_calls_the_cli(name):
    source = _source(name).read_text(encoding="utf-8")
    for word in ("argparse.Namespace", "SimpleNamespace"):
        assert word not in source, (f"{_source(name)} mentions {word}: library functions take typed arguments "
                                    "or a config dataclass (runs.RunConfig); only cli.py/commands.py see argparse")
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    assert not imported & CLI_LAYER, (f"{_source(name)} imports {sorted(imported & CLI_LAYER)}: the library must "
                                      "not call back into the command line; call the library function instead")
