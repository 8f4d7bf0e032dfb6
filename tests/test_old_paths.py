"""The 0.1 module paths (the flat layout) still import, as the modules that hold their code now, with a
DeprecationWarning naming the new path, and no file is left at an old path (`adaptrec_prompts._compat`;
CHANGELOG.md lists the moves)."""

import importlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import adaptrec_prompts
from adaptrec_prompts import _compat

PACKAGE = Path(adaptrec_prompts.__file__).parent
CHANGELOG = PACKAGE.parent / "CHANGELOG.md"
# every public name each 0.1 module defined (or marked as re-exported), read from its source at 359d436
OLD_NAMES = json.loads((Path(__file__).parent / "fixtures" / "old_module_names.json").read_text())
HEAVY = ("torch", "chromadb", "trl", "transformers", "peft")


def _targets(old: str) -> tuple[str, ...]:
    return _compat._targets(old) if old in _compat.MOVED else _compat.FORMER_MODULES[old]


def test_every_old_module_is_answered():
    assert set(OLD_NAMES) == set(_compat.MOVED) | set(_compat.FORMER_MODULES)


@pytest.mark.parametrize("old", sorted(_compat.MOVED))
def test_an_old_path_imports_the_module_holding_its_code_with_a_warning(old):
    sys.modules.pop(old, None)  # as a fresh interpreter would import it
    with pytest.warns(DeprecationWarning) as caught:
        module = importlib.import_module(old)
    targets = _targets(old)
    assert any(str(w.message).startswith(f"{old} moved to {' and '.join(targets)}") for w in caught)
    assert any(w.filename == __file__ for w in caught)  # attributed to the importing line, not to importlib
    if len(targets) == 1:  # moved whole: the same module object under both names
        assert module is importlib.import_module(targets[0])
    homes = [importlib.import_module(t) for t in targets]
    for name in OLD_NAMES[old]:
        value = getattr(module, name)
        assert any(getattr(home, name, None) is value for home in homes), f"{old}.{name}"
    assert not PACKAGE.joinpath(*old.split(".")[1:]).with_suffix(".py").exists()  # no shim file


@pytest.mark.parametrize("package", sorted(_compat.FORMER_MODULES))
def test_a_package_named_like_its_old_module_answers_the_old_names(package):
    module = importlib.import_module(package)
    homes = [importlib.import_module(t) for t in _compat.FORMER_MODULES[package]]
    for name in OLD_NAMES[package]:
        vars(module).pop(name, None)  # not cached by an earlier lookup
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = getattr(module, name)
        assert any(getattr(home, name, None) is value for home in homes), f"{package}.{name}"
        exported = name in module._LAZY
        assert exported or any(f"{package}.{name} moved to" in str(w.message) for w in caught), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        module.nope  # noqa: B018


def test_old_and_new_paths_give_the_same_objects():
    with warnings.catch_warnings():  # the warnings themselves: above
        warnings.simplefilter("ignore", DeprecationWarning)
        from adaptrec_prompts.modules import AdaptRec, load_program
        from adaptrec_prompts.retriever import UserIndex
        from adaptrec_prompts.runs import RunConfig, run_eval
    from adaptrec_prompts.data.prepare import load_prepared
    from adaptrec_prompts.programs.adaptrec import AdaptRec as new_adaptrec

    assert AdaptRec is new_adaptrec is adaptrec_prompts.AdaptRec and load_program is adaptrec_prompts.load_program
    assert (UserIndex, RunConfig, run_eval) == (adaptrec_prompts.UserIndex, adaptrec_prompts.RunConfig,
                                                adaptrec_prompts.run_eval)
    assert load_prepared is adaptrec_prompts.load_prepared


def test_the_finder_answers_only_old_paths():
    assert _compat.OldPathFinder().find_spec("adaptrec_prompts.nope") is None
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("adaptrec_prompts.nope")


def test_import_stays_light_and_old_paths_load_no_more_than_new_ones():
    code = ("import sys, warnings\nwarnings.simplefilter('ignore')\nimport adaptrec_prompts\n"
            "light = [m for m in ('dspy', *HEAVY) if m in sys.modules]\n"
            "finder = any(type(f).__name__ == 'OldPathFinder' for f in sys.meta_path)\n"
            "import adaptrec_prompts.modules, adaptrec_prompts.retriever, adaptrec_prompts.neighbors, "
            "adaptrec_prompts.live, adaptrec_prompts.runs, adaptrec_prompts.report\n"
            "from adaptrec_prompts.evaluation import estimate_cost\n"
            "print(light, finder, [m for m in HEAVY if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n" + code], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    assert out.strip() == "[] True []"


def test_the_changelog_lists_every_move():
    text = CHANGELOG.read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(" `"): line.split("|")[2] for line in text.splitlines()
            if line.startswith("| `adaptrec_prompts.")}
    for old in sorted(OLD_NAMES):
        assert old in rows, f"CHANGELOG.md has no row for {old}"
        for target in _targets(old):
            assert f"`{target}`" in rows[old], f"CHANGELOG.md: {old} -> {target} missing"
