"""The public API (`adaptrec_prompts.__all__`): importing the package stays light, and every name resolves
to the object its defining module exports."""

import json
import subprocess
import sys

import pytest

import adaptrec_prompts

HEAVY = ("torch", "chromadb", "trl", "transformers")


def _loaded_after(code: str) -> dict:
    probe = (f"import json, sys\n{code}\n"
             f"print(json.dumps({{'heavy': [m for m in {HEAVY!r} if m in sys.modules], "
             "'dspy': 'dspy' in sys.modules}))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_is_light_and_resolving_names_does_not_load_engines():
    assert _loaded_after("import adaptrec_prompts") == {"heavy": [], "dspy": False}
    # the names resolve from modules that import chromadb/torch/trl only when a client or model is made
    resolved = _loaded_after("import adaptrec_prompts\nfor name in adaptrec_prompts.__all__: "
                             "getattr(adaptrec_prompts, name)")
    assert resolved == {"heavy": [], "dspy": True}


@pytest.mark.parametrize("name", adaptrec_prompts.__all__)
def test_every_exported_name_resolves_to_its_module_object(name):
    import importlib

    value = getattr(adaptrec_prompts, name)
    module = adaptrec_prompts._LAZY.get(name)
    if module is not None:
        assert value is getattr(importlib.import_module(module), name)
    assert name in dir(adaptrec_prompts)


def test_errors_are_one_family_and_unknown_names_fail_normally():
    errors = [getattr(adaptrec_prompts, n) for n in adaptrec_prompts.__all__ if n.endswith("Error")]
    assert len(errors) >= 8 and all(issubclass(e, adaptrec_prompts.AdaptRecError) for e in errors)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        adaptrec_prompts.nope  # noqa: B018
    from adaptrec_prompts import AdaptRec, UserIndex, prepare_dataset  # the README's imports

    assert AdaptRec.from_index and UserIndex.open and callable(prepare_dataset)


def test_runs_are_part_of_the_public_api():
    """`adaptrec eval` as a call: RunConfig, run_eval and Results come from the package, resolved from runs."""
    from adaptrec_prompts import Results, RunConfig, run_eval
    from adaptrec_prompts.evaluation import runs

    assert {"RunConfig", "run_eval", "Results"} <= set(adaptrec_prompts.__all__)
    assert (RunConfig, run_eval, Results) == (runs.RunConfig, runs.run_eval, runs.Results)
    assert RunConfig(data="d", out="o").to_dict()["program"] == "static"  # adaptrec eval's defaults
