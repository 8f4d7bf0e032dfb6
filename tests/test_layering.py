"""How the package hangs together (docs/design.md, Package map): every module imports on its own, the
subpackages import only the layers below their own, no two modules import each other (even inside
functions), and the library never reaches up into the command line (`cli/` parses, `cli/commands.py`
translates arguments into library calls; nothing below it takes an argparse namespace or parses argv)."""

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

# The layers, bottom first: a module may import its own layer and the ones before it, never one after it.
# The order is the data flow (README, docs/design.md): the programs call no backend (score mode asks the LM's
# engine for `score` by duck typing), the backends render prompts with the programs (`backends.tiny`), the
# evaluation runs programs on backends, fine-tuning evaluates its adapters, the paper's drivers
# (`experiments`, `benchmarks`) run all of it, and the command line calls everything.
LAYERS = ("shared", "data", "retrieval", "programs", "backends", "evaluation", "finetune", "drivers", "cli")
SHARED = {"errors", "utils", "_compat", "_lazy"}  # and the top package itself (its names resolve lazily)
DRIVERS = {"experiments", "benchmarks"}
# (importer, imported) pairs allowed to climb, each with its reason. Empty: fix the dependency instead (move a
# helper down, pass a callable in).
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}
# Library modules that parse their own argv: the child process LlamaCppServer starts
# (`python -m adaptrec_prompts.backends.llamacpp GGUF --port P`, also documented for starting it by hand).
OWN_ARGV = {"adaptrec_prompts.backends.llamacpp"}

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


def layer(name: str) -> str:
    parts = name.split(".")
    if len(parts) == 1 or parts[1] in SHARED:
        return "shared"
    if parts[1] in DRIVERS:
        return "drivers"
    assert parts[1] in LAYERS, f"{name}: a new subpackage needs a layer in tests/test_layering.py and docs/design.md"
    return parts[1]


def imports(name: str) -> list[tuple[str, int]]:
    """(package module, line) for every import of the package in `name`'s source: at module level, inside
    functions and under `if TYPE_CHECKING` alike (a late import is still a dependency)."""
    found = []
    for node in ast.walk(ast.parse(_source(name).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{_source(name)}:{node.lineno}: use absolute imports"
            found.append((node.module, node.lineno))
            # `from adaptrec_prompts.utils import timing` imports the module adaptrec_prompts.utils.timing
            found += [(f"{node.module}.{a.name}", node.lineno) for a in node.names if f"{node.module}.{a.name}" in MODULES]
    return [(module, line) for module, line in found if module.split(".")[0] == "adaptrec_prompts"]


def test_the_walk_finds_the_package():
    assert {"adaptrec_prompts.backends.gemma", "adaptrec_prompts.backends.api", "adaptrec_prompts.evaluation.harness",
            "adaptrec_prompts.evaluation.runs", "adaptrec_prompts.cli.app"} <= set(MODULES)
    assert {layer(m) for m in MODULES} == set(LAYERS)


@pytest.mark.parametrize("name", MODULES)
def test_a_module_imports_only_its_own_layer_and_the_layers_below(name):
    mine = LAYERS.index(layer(name))
    climbs = [f"{name} ({layer(name)}) imports {module} ({layer(module)}) at {_source(name).name}:{line}"
              for module, line in imports(name)
              if LAYERS.index(layer(module)) > mine and (name, module) not in ALLOWED_UPWARD]
    assert not climbs, ("a module imports a higher layer (order: " + " < ".join(LAYERS) + "); move the helper "
                        "down or pass it in:\n" + "\n".join(climbs))


def test_the_allow_list_names_real_imports():
    for importer, imported in ALLOWED_UPWARD:
        assert imported in {m for m, _ in imports(importer)}, f"stale entry ({importer}, {imported})"


def test_no_two_modules_import_each_other_even_inside_functions():
    graph = {name: {m for m, _ in imports(name) if m in MODULES and m != name} for name in MODULES}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in MODULES:
        if v not in index:
            visit(v)
    assert not cycles, f"import circles: {cycles}"


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
                                    "or a config dataclass (RunConfig); only cli/ sees argparse")
    imported = {m for m, _ in imports(name)}
    assert not imported & CLI_LAYER, (f"{_source(name)} imports {sorted(imported & CLI_LAYER)}: the library must "
                                      "not call back into the command line; call the library function instead")
    if name not in OWN_ARGV:
        assert "argparse" not in {alias.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Import)
                                  for alias in node.names}, f"{_source(name)} parses arguments: that is cli/'s job"
