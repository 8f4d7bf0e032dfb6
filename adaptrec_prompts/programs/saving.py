"""Programs as JSON files: `save_program` writes a program's configuration and DSPy state (instructions,
demos), `load_program` builds the program a file describes; never a pickle, never an LM endpoint or key.

Only what `save_program` writes is read back (`check_program_payload`, docs/failure-behaviour.md). DSPy's own
`program.load(path)` reads such a file too, into a program of the same configuration (`AdaptRec.load`).
"""

from __future__ import annotations

import json
from pathlib import Path

from adaptrec_prompts.data.render import load_template_obj, template_problem
from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.programs.adaptrec import AdaptRec

PROGRAM_FORMAT = 1


def save_program(program: AdaptRec, path: str | Path) -> Path:
    """Write a program as JSON: its config and DSPy state (instructions, demos). No LM, no keys."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = program.dump_state()
    for predictor in state.values():  # an LM set on a predictor carries endpoints: never saved
        if isinstance(predictor, dict):
            predictor["lm"] = None
    payload = {"format": PROGRAM_FORMAT, "class": "AdaptRec", "config": program.config(), "state": state}
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    return path


# What `save_program` writes, and all `load_program` accepts (docs/failure-behaviour.md): a program file names
# prompts and demonstrations, never a model, a server or an attribute to set. DSPy's `Predict.load_state` would
# rebuild an LM from a predictor's "lm" entry and set any other key as an attribute; both are refused here.
PROGRAM_KEYS = {"format", "class", "config", "state"}
PREDICTOR_KEYS = {"demos", "lm", "signature", "traces", "train"}
SIGNATURE_KEYS = {"instructions", "fields"}
FIELD_KEYS = {"prefix", "description"}


def _refuse(path: Path, where: str, problem: str) -> ConfigError:
    return ConfigError(f"{path}: {where}: {problem}; a program file holds only what save_program writes "
                       "(config, instructions, demos): remove it, or save the program again with save_program()")


def _json_value(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_value(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_json_value(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def check_program_payload(path: Path, payload, program: AdaptRec) -> None:
    """Refuse a program file with anything `save_program` does not write (an `lm` state above all).

    Raises:
        ConfigError: naming the file and the key.
    """
    if not isinstance(payload, dict):
        raise _refuse(path, "top level", f"expected a JSON object, got {type(payload).__name__}")
    for key in sorted(set(payload) - PROGRAM_KEYS):
        raise _refuse(path, f"key {key!r}", "not a key of a saved program")
    if payload.get("format") != PROGRAM_FORMAT or payload.get("class") != "AdaptRec":
        raise _refuse(path, "format/class", f"expected format {PROGRAM_FORMAT} and class 'AdaptRec', got "
                      f"{payload.get('format')!r} and {payload.get('class')!r}")
    state = payload.get("state")
    expected = {name for name, _ in program.named_predictors()}
    if not isinstance(state, dict):
        raise _refuse(path, "state", f"expected an object, got {type(state).__name__}")
    for name in sorted(set(state) ^ expected):
        raise _refuse(path, f"state[{name!r}]", f"this program's predictors are {sorted(expected)}")
    for name, predictor in state.items():
        where = f"state[{name!r}]"
        if not isinstance(predictor, dict):
            raise _refuse(path, where, f"expected an object, got {type(predictor).__name__}")
        for key in sorted(set(predictor) - PREDICTOR_KEYS):
            raise _refuse(path, f"{where}[{key!r}]", "not a key save_program writes")
        if predictor.get("lm") is not None:  # DSPy would build this LM and call it instead of --lm/--api-base
            raise _refuse(path, f"{where}['lm']", "a program file must not name a model or a server (the run's "
                          "--lm/--api-base decide them); save_program writes null here")
        for key in ("demos", "traces", "train"):
            value = predictor.get(key, [])
            if not isinstance(value, list) or not _json_value(value):
                raise _refuse(path, f"{where}[{key!r}]", f"expected a list of JSON values, got {type(value).__name__}")
        if not all(isinstance(d, dict) for d in predictor.get("demos", [])):
            raise _refuse(path, f"{where}['demos']", "every demo must be an object of field name -> value")
        signature = predictor.get("signature")
        if not isinstance(signature, dict):
            raise _refuse(path, f"{where}['signature']", f"expected an object, got {type(signature).__name__}")
        for key in sorted(set(signature) - SIGNATURE_KEYS):
            raise _refuse(path, f"{where}['signature'][{key!r}]", "not a key save_program writes")
        if not isinstance(signature.get("instructions", ""), str):
            raise _refuse(path, f"{where}['signature']['instructions']", "expected a string")
        fields = signature.get("fields", [])
        if not isinstance(fields, list) or not all(isinstance(f, dict) and set(f) <= FIELD_KEYS and
                                                   all(isinstance(v, str) for v in f.values()) for f in fields):
            raise _refuse(path, f"{where}['signature']['fields']",
                          f"expected a list of objects with string {sorted(FIELD_KEYS)}")


def load_program(path: str | Path, **overrides) -> AdaptRec:
    """Build an AdaptRec from a saved JSON file (optionally overriding config keys such as mode).

    Only what `save_program` writes is accepted (`check_program_payload`): a predictor state naming an LM,
    or any other key, is refused, and no LM is ever built from a file.

    Raises:
        ConfigError: the file is not a saved AdaptRec program, or holds a key save_program does not write.
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(payload, dict) and "metadata" in payload and "config" not in payload:
            raise ConfigError(f"{path} was written by DSPy's program.save: it holds DSPy state without the program's "
                              "configuration; build the same AdaptRec and call program.load(path), or save with "
                              "save_program(program, path) to read it back with load_program")
        if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict):
            raise KeyError("config")
        unknown = sorted(set(payload["config"]) - set(_INIT_ARGS) - {"random_from"})
        if unknown:
            raise _refuse(path, f"config[{unknown[0]!r}]", f"not an AdaptRec setting; valid: {', '.join(_INIT_ARGS)}")
        saved = payload["config"].get("labels", "numbers")
        if overrides.get("labels", saved) != saved:  # the saved instructions and demos name the saved labels
            raise ConfigError(f"{path} was saved with labels={saved!r}: its instructions and demos say so; "
                              f"evaluate it with labels={saved!r}, or build and compile a program with "
                              f"labels={overrides['labels']!r}")
        config = {**payload["config"], **overrides}
        config.pop("random_from", None)  # an identity marker of config(), not a constructor argument
        template = config.pop("template")
        if not isinstance(template, dict):  # save_program writes the wording itself, never a path to read
            raise _refuse(path, "config['template']", f"expected the template's fields, got {type(template).__name__}")
        try:
            template = load_template_obj(template)
        except ConfigError:
            raise
        except ValueError as exc:  # pydantic: a misspelt placeholder or key in the saved wording
            raise ConfigError(f"{path}: config.template is not a valid template: {template_problem(exc)}; fix it "
                              "or save the program again") from None
        try:
            program = AdaptRec(template, **config)
        except ConfigError as exc:
            raise ConfigError(f"{path}: config: {exc}") from None
        check_program_payload(path, payload, program)
        _check_state_shapes(path, program, payload["state"])
        # the state is checked: no "lm", no key DSPy would set as an attribute, the shapes DSPy reads
        program.load_state(payload["state"])
    except ConfigError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a saved AdaptRec program ({type(exc).__name__}: {exc}); create one with "
                          "save_program()") from None
    return program


_INIT_ARGS = ("template", "selection", "n_retrieve", "m_select", "mode", "seed", "stage2", "orders", "prompt",
              "demo_items", "labels")


def _check_state_shapes(path: Path, program: AdaptRec, state) -> None:
    """The saved predictor states have the shapes DSPy reads (an object per predictor, a list of demo objects,
    a signature object) and no key that would replace one of the predictor's methods (DSPy sets every key
    as an attribute), so a bad file fails here, named, not at the first example after the model loaded."""
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: \"state\" must be an object of predictor states, got {type(state).__name__}")
    for name, predictor in program.named_predictors():
        entry = state.get(name)
        where = f"{path}: state[{name!r}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be an object (demos, signature, ...), got "
                              f"{'nothing' if entry is None else type(entry).__name__}; save the program again")
        demos = entry.get("demos", [])
        if not isinstance(demos, list) or not all(isinstance(d, dict) for d in demos):
            raise ConfigError(f"{where}[\"demos\"] must be a list of demo objects, got "
                              f"{type(demos).__name__ if not isinstance(demos, list) else 'a list with a non-object'}"
                              "; use [] for none")
        if not isinstance(entry.get("signature"), dict):
            raise ConfigError(f"{where}[\"signature\"] must be an object (instructions, fields); save the program "
                              "again")
        for key in entry:  # DSPy reads these four itself; it sets every other key as an attribute
            if key not in ("signature", "extended_signature", "lm", "fields") and callable(getattr(predictor, key,
                                                                                                  None)):
                raise ConfigError(f"{where}[{key!r}] would replace the predictor's method {key!r}: a saved program "
                                  "holds data only; remove the key")
