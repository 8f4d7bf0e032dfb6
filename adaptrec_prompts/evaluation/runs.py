"""One evaluation run as a library call: `run_eval(RunConfig(...))` is `adaptrec eval`.

`RunConfig` holds every setting of a run, with the defaults of `adaptrec eval`; `run_eval` checks it against
the data, builds the program (an AdaptRec variant, a saved program or a baseline) and the LM, and evaluates
it with the harness (`harness.evaluate`: resumable run folder, manifest, predictions log, metrics with
CIs). `adaptrec eval`, `adaptrec experiment` and `adaptrec pipeline` all run through here, so a notebook,
a script and the command line produce the same run folder for the same settings.

    from adaptrec_prompts import RunConfig, run_eval
    results = run_eval(RunConfig(data="artifacts/ml-100k-nb", out="runs/static", program="static",
                                 lm="hf:artifacts/models/tiny", limit=20))
    results.metrics["HR@1"]["value"], results.to_pandas()[["example_id", "hit1"]]

This module imports nothing heavy at import time (the public API resolves its names lazily and stays light).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from adaptrec_prompts.errors import ConfigError, IncompleteRunError
from adaptrec_prompts.evaluation.results import Results, read_log

logger = logging.getLogger(__name__)

PROGRAM_CHOICES = ("none|random|random-retrieved|static|adaptive (AdaptRec selection), "
                   "baseline:random|popularity|userknn|sasrec[:early-stop]|demo-match[:random|:random-retrieved], or a .json")
NEEDS_LM_CLI = "this program needs an LM: pass --lm hf:PATH (local) or e.g. --lm openai/gpt-4o"
# the library's words start as the command line's (callers match on them) and name the Python argument
NEEDS_LM = NEEDS_LM_CLI + "; in Python: RunConfig(lm='hf:PATH') or RunConfig(lm='openai/gpt-4o')"


# The valid range of each numeric RunConfig field (`options.number_problem`); the CLI's types use the same.
NUMERIC_RULES = {"retries": {"low": 0}, "timeout": {"low": 0, "integer": False, "above": True},
                 "num_retries": {"low": 0}, "demo_items": {"low": 1}, "n": {"low": 1}, "m": {"low": 1},
                 "seed": {"low": 0}, "limit": {"low": 1}, "threads": {"low": 1}, "max_new_tokens": {"low": 1}}


@dataclass
class RunConfig:
    """Everything one evaluation run needs; the fields are `adaptrec eval`'s options, with its defaults.

    Attributes:
        data: a prepared folder (with neighbour columns for AdaptRec variants and UserKNN).
        out: the run folder (results.json, manifest.json, predictions.jsonl); rerunning into it resumes.
        split: which frozen split to score.
        program: an AdaptRec selection (none, random, random-retrieved, static, adaptive), a baseline
            (baseline:random, baseline:popularity, baseline:userknn, baseline:sasrec (`:early-stop`: epochs chosen by
            validation HR@1), baseline:demo-match: the votes of the users the static program shows, with its n, m
            and demo_items; `:random` or `:random-retrieved` for those selections), a saved program (.json),
            or a program object (Python only): an `AdaptRec` (a compiled or loaded one, or a live one from
            `AdaptRec.from_index`) or a baseline object, used as it is; `n`, `m`, `mode`, `prompt`,
            `demo_items`, `labels` and `template` must then be left at their defaults or agree with it. The
            manifest records it as "AdaptRec object" next to its configuration and DSPy state.
        lm: "hf:PATH" for a local model, the "gemma-3-270m" preset, or a provider/model for `dspy.LM`
            (e.g. "openai/gpt-4o"). Only AdaptRec programs use it.
        adapter: a peft LoRA adapter folder for local models.
        api_base: an OpenAI-compatible server URL (vLLM, llama.cpp).
        mode: Stage-3 mode (generate, score, score-calibrated, score-permuted). None means "score" for a new
            program and the saved mode for a .json program (a saved program keeps its own unless told).
        retries: harness retries of an example after a provider/transport error.
        timeout: API models: seconds before a request is abandoned.
        num_retries: API models: `dspy.LM`'s own retries per request.
        prompt: "full" (DSPy's ChatAdapter) or "compact" (instructions-only system message, as the SFT rows).
            None: the adapter's (its adaptrec_manifest.json), else "full".
        demo_items: show each similar user's last N items only. None: the adapter's, else whole histories.
        labels: candidate labels, "numbers" or "letters" (one token in any tokenizer). None: the adapter's,
            else "numbers". An adapter's trained settings may not be contradicted (`adapter_settings`).
        n: N, the retrieved users a program (and UserKNN) may use; at most what the data holds.
        m: M, the users shown as demonstrations.
        seed: program seed (random selection, random baseline, SASRec).
        limit: score the first `limit` examples of the split only (None: all of them).
        threads: examples in parallel (API backends; keep 1 for a local model).
        max_new_tokens: generation budget (max_tokens for API models).
        device: local models: "cpu", "cuda", "cuda:N", "mps" or "auto" (`devices`); recorded in the
            manifest's config when not "cpu" (runs from before the option stay resumable).
        template: a domain name or .toml path (None: the data's domain).
    """

    data: str | Path
    out: str | Path
    split: str = "test"
    program: str | object = "static"
    lm: str | None = None
    adapter: str | None = None
    api_base: str | None = None
    mode: str | None = None
    retries: int = 2
    timeout: float = 120.0
    num_retries: int = 3
    prompt: str | None = None
    demo_items: int | None = None
    labels: str | None = None
    n: int = 10
    m: int = 5
    seed: int = 0
    limit: int | None = None
    threads: int = 1
    max_new_tokens: int = 64
    device: str = "cpu"
    template: str | None = None

    def __post_init__(self) -> None:
        # the same choices the command line offers, checked here for Python callers (and config files)
        from adaptrec_prompts.data.render import LABELS
        from adaptrec_prompts.data.schema import SPLITS
        from adaptrec_prompts.programs.chat_adapters import PROMPTS
        from adaptrec_prompts.programs.recommender import MODES
        from adaptrec_prompts.utils.devices import DEVICES, device_problem

        for name, value, valid in (("split", self.split, SPLITS), ("prompt", self.prompt, (None, *PROMPTS)),
                                   ("labels", self.labels, (None, *LABELS)), ("mode", self.mode, (None, *MODES))):
            if value not in valid:
                raise ConfigError(f"RunConfig.{name}={value!r} is not valid; use one of "
                                  f"{', '.join(v for v in valid if v is not None)}")
        if not isinstance(self.program, (str, os.PathLike)) and not callable(getattr(self.program, "config", None)):
            raise TypeError(f"RunConfig.program={self.program!r} is a {type(self.program).__name__}; use a name "
                            f"({PROGRAM_CHOICES}) or a program object (an AdaptRec or a baseline)")
        if device_problem(self.device):
            raise ConfigError(f"RunConfig.device={self.device!r} is not valid; use {DEVICES}")
        from adaptrec_prompts.backends.api import check_request_settings
        from adaptrec_prompts.utils.options import number_problem

        check_request_settings(self.timeout, self.num_retries, self.retries)  # before any folder or model
        for name, rule in NUMERIC_RULES.items():
            value = getattr(self, name)
            if value is None and name in ("limit", "demo_items"):
                continue
            problem = number_problem(value, **rule)
            if problem:
                raise ConfigError(f"RunConfig.{name} {problem}"
                                  + (" (None scores the whole split)" if name == "limit" else "")
                                  + (" (None shows whole histories)" if name == "demo_items" else ""))

    def to_dict(self) -> dict:
        """The settings as JSON values (paths as strings, a program object as `program_label`), as recorded in
        the run manifest."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}  # asdict would deep-copy a program object
        values["program"] = program_label(self.program)
        return {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in values.items()}


def program_label(program) -> str:
    """How a run records `RunConfig.program`: the spec as given, or "<class> object" for a program object
    (its configuration and DSPy state are in the manifest's `program` section)."""
    if isinstance(program, (str, os.PathLike)):
        return os.fspath(program)
    return f"{type(program).__name__} object"


# RunConfig fields a program object already answers, with the object's value of each
_OBJECT_SETTINGS = {"mode": "mode", "n": "n_retrieve", "m": "m_select", "prompt": "prompt", "demo_items": "demo_items",
                    "labels": "labels"}


def _check_program_object(config: RunConfig, program) -> None:
    """A program object is used as it is: a run setting that would change it must agree with it."""
    defaults = {f.name: f.default for f in fields(RunConfig)}
    for name, attribute in _OBJECT_SETTINGS.items():
        given, own = getattr(config, name), getattr(program, attribute, None)
        if given != defaults[name] and given != own:
            raise ConfigError(f"RunConfig.{name}={given!r}, but the program's {attribute}={own!r}: a program object is "
                              f"evaluated as it is; leave {name} at its default ({defaults[name]!r}) or build the "
                              "program with the setting you want")
    if config.template is not None:
        raise ConfigError(f"RunConfig.template={config.template!r}: a program object brings its own template; leave "
                          "template=None")
    attached = [name for name, predictor in getattr(program, "named_predictors", list)() if predictor.lm is not None]
    if attached:  # it would score with that LM while the manifest names RunConfig.lm
        raise ConfigError(f"the program has its own LM on {', '.join(attached)} (set_lm), but a run records the "
                          "LM it names in RunConfig.lm; call program.set_lm(None) and pass the LM as RunConfig.lm "
                          "(or run_eval(..., lm=...))")


def config_fields() -> tuple[str, ...]:
    """RunConfig's field names: the options a config file or a command line may set for a run."""
    return tuple(f.name for f in fields(RunConfig))


def build_program(spec: str, data_dir: str | Path, *, n: int = 10, m: int = 5, mode: str = "score", seed: int = 0,
                  template: str | None = None, mode_given: bool = True, prompt: str = "full",
                  demo_items: int | None = None, labels: str = "numbers"):
    """A program (AdaptRec variant, saved program or baseline) from a spec (`RunConfig.program`)."""
    from adaptrec_prompts.data.prepare import load_manifest, load_prepared
    from adaptrec_prompts.data.render import load_template, manifest_template
    from adaptrec_prompts.programs.adaptrec import SELECTIONS, AdaptRec
    from adaptrec_prompts.programs.saving import load_program
    from adaptrec_prompts.retrieval.embedders import training_sequences

    if not isinstance(spec, (str, os.PathLike)):  # a program object (RunConfig.program): used as it is
        return spec
    spec = os.fspath(spec)
    if spec in SELECTIONS:
        tmpl = load_template(template) if template else manifest_template(load_manifest(data_dir))
        return AdaptRec(tmpl, selection=spec, n_retrieve=n, m_select=m, mode=mode, seed=seed, prompt=prompt,
                        demo_items=demo_items, labels=labels)
    if spec.endswith(".json"):
        return load_program(spec, **({"mode": mode} if mode_given else {}),
                            **({"labels": labels} if labels != "numbers" else {}))
    name = spec.removeprefix("baseline:")
    train = load_prepared(data_dir)["train"]
    if name == "random":
        from adaptrec_prompts.evaluation.baselines import RandomBaseline

        return RandomBaseline(seed)
    if name in ("popularity", "userknn"):
        from adaptrec_prompts.evaluation.baselines import PopularityBaseline, UserKNNBaseline

        seqs = training_sequences(train)
        return PopularityBaseline(seqs) if name == "popularity" else UserKNNBaseline(seqs, n_retrieve=n)
    if name.split(":")[0] == "demo-match":
        from adaptrec_prompts.evaluation.baselines.demo_match import DemoMatchBaseline

        selection = name.partition(":")[2] or "static"
        return DemoMatchBaseline(training_sequences(train), selection=selection, n_retrieve=n, m_select=m,
                                 demo_items=demo_items, seed=seed)
    if name in ("sasrec", "sasrec:early-stop"):
        from adaptrec_prompts.evaluation.baselines.sasrec import SASRecBaseline

        if name == "sasrec":
            return SASRecBaseline(train, seed=seed)
        valid = load_prepared(data_dir)["valid"]  # epochs chosen on validation HR@1, never on test
        return SASRecBaseline(train, seed=seed, epochs=30, valid=valid.to_list())
    raise ConfigError(f"unknown program {spec!r}; use {PROGRAM_CHOICES}")


def adapter_settings(config: RunConfig) -> RunConfig:
    """`config` with prompt, labels and demo_items resolved: the ones given, else the adapter's trained ones
    (said in a warning), else the defaults ("full", "numbers", whole histories).

    Raises:
        ConfigError: a given setting contradicts the adapter's training (an adapter answers in the prompt it
            was trained on: docs/failure-behaviour.md).
    """
    import dataclasses

    from adaptrec_prompts.backends.lora import MANIFEST, trained_settings

    trained = trained_settings(config.adapter) if config.adapter else None
    defaults = {"prompt": "full", "labels": "numbers", "demo_items": None}
    if trained is None:
        if not isinstance(config.program, str):  # a program object brings its own (`_check_program_object`)
            return config
        return dataclasses.replace(config, **{k: v if getattr(config, k) is None else getattr(config, k)
                                              for k, v in defaults.items()})
    zero_shot = config.program == "none"  # demo_items shape demonstrations, which a zero-shot prompt has none of
    differ = {k: getattr(config, k) for k in trained if getattr(config, k) is not None
              and getattr(config, k) != trained[k] and not (k == "demo_items" and zero_shot)}
    if differ:
        option = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in trained.items() if v is not None)
        raise ConfigError(f"--adapter {config.adapter} was trained with {trained} ({Path(config.adapter) / MANIFEST}); "
                          f"this run asks for {differ}: an adapter answers in the prompt it was trained on. Leave "
                          f"these options out to use the adapter's ({option}), or use an adapter trained with them")
    taken = {k: v for k, v in trained.items() if getattr(config, k) is None}
    if taken:
        logger.warning("--adapter %s: using the prompt settings it was trained with: %s", config.adapter,
                       ", ".join(f"{k}={v}" for k, v in taken.items()))
    return dataclasses.replace(config, **taken)


def load_lm(config: RunConfig, progress: bool = True):
    """The `dspy.LM` a run's config names (`make_lm` with the run's budget, device and API settings): load it
    once and pass it to several `run_eval` calls that use the same `lm`. `progress`: transformers' loading
    bar for a local model, under the package's rule (`progress.library_bars`)."""
    from adaptrec_prompts.backends.api import is_local, make_lm, probe_server

    if not config.lm:
        raise ConfigError(NEEDS_LM, cli=NEEDS_LM_CLI)
    lm = make_lm(config.lm, adapter=config.adapter, api_base=config.api_base,
                 **({"max_new_tokens": config.max_new_tokens, "device": config.device, "progress": progress}
                    if is_local(config.lm) else
                    {"max_tokens": config.max_new_tokens, "num_retries": config.num_retries,
                     "timeout": config.timeout}))
    if not is_local(config.lm):  # a server that cannot serve the run is refused before the run folder exists
        probe_server(config.lm, config.api_base, config.timeout)
    return lm


def run_eval(config: RunConfig, lm=None, progress: bool = True, *, config_file: str | Path | None = None) -> Results:
    """Score `config.program` on `config.split` of `config.data` into the run folder `config.out`
    (resumable: finished examples are never recomputed; `adaptrec eval` is this call).

    Args:
        config: the run's settings.
        lm: an already loaded LM to reuse (`load_lm`); it must be the one `config.lm` names. None loads it
            when the program needs one (baselines never do).
        progress: a bar while the examples are scored (named after the run folder: count, rate, time left,
            running HR@1) and transformers' loading bar; `progress.enabled` has the rule (a terminal, not CI).
        config_file: the file the settings were read from (`--config`), recorded in the manifest.

    Returns:
        The results, also in `config.out`/results.json.

    Raises:
        ConfigError: the settings do not fit the data (more neighbours than it holds, no LM for a program
            that needs one, an unknown program, a run folder that holds another run).
        IncompleteRunError: examples failed on provider/transport errors; `.results` has what was scored, and
            rerunning retries only the failed examples.
    """
    from adaptrec_prompts.backends.api import is_local
    from adaptrec_prompts.data.prepare import load_manifest, load_prepared
    from adaptrec_prompts.evaluation.harness import evaluate
    from adaptrec_prompts.programs.adaptrec import AdaptRec

    if config.program == "baseline:sasrec:early-stop" and config.split == "valid":
        raise ConfigError("baseline:sasrec:early-stop chooses its epochs on the valid split: evaluated on valid it "
                          "would be tuned on the rows it is scored on; use baseline:sasrec there")
    config = adapter_settings(config)  # before anything loads: a contradicted adapter is refused here
    manifest = load_manifest(config.data)
    split = load_prepared(config.data)[config.split]
    if config.limit:
        split = split.select(range(min(config.limit, split.num_rows)))
    program = build_program(config.program, config.data, n=config.n, m=config.m, mode=config.mode or "score",
                            seed=config.seed, template=config.template, mode_given=config.mode is not None,
                            prompt=config.prompt, demo_items=config.demo_items, labels=config.labels)
    if program is config.program:
        _check_program_object(config, program)
    if config.adapter and isinstance(program, AdaptRec):  # a saved program brings its own prompt settings
        from adaptrec_prompts.backends.lora import MANIFEST, trained_settings

        trained = trained_settings(config.adapter)
        has = {"prompt": program.prompt, "labels": program.labels, "demo_items": program.demo_items}
        differ = {k: v for k, v in has.items() if trained is not None and v != trained[k]
                  and not (k == "demo_items" and program.selection == "none")}
        if differ:
            raise ConfigError(f"{config.program} uses {differ}, but --adapter {config.adapter} was trained with "
                              f"{ {k: trained[k] for k in differ} } ({Path(config.adapter) / MANIFEST}): an adapter "
                              "answers in the prompt it was trained on; use a program with the adapter's settings")
    persisted = (manifest.get("neighbors") or {}).get("n")
    live = getattr(program, "retriever", None) is not None  # AdaptRec.from_index retrieves per call
    spec = config.program if isinstance(config.program, str) else ""
    uses_neighbors = (isinstance(program, AdaptRec) and program.selection != "none" and not live
                      or spec == "baseline:userknn" or spec.startswith("baseline:demo-match"))
    n = program.n_retrieve if isinstance(program, AdaptRec) else config.n
    if uses_neighbors and persisted is not None and n > persisted:
        raise ConfigError(f"n={n}: {config.data} holds {persisted} neighbours per row; use n={persisted} or less, "
                          f"or rebuild the neighbours with build_neighbors(..., n={n})",
                          cli=f"--n {n}: {config.data} holds {persisted} neighbours per row; use --n {persisted} "
                          f"or less, or rebuild with `adaptrec index neighbors --n {n}`")
    if uses_neighbors and isinstance(program, AdaptRec) and persisted is None:
        # refused here, before an LM is loaded, rather than at the first example
        what = "random users (random_* columns)" if program.selection == "random" else "Stage-1 neighbours"
        raise ConfigError(f"program selection={program.selection!r} needs {what}, and {config.data} has none: build "
                          "them with adaptrec_prompts.build_neighbors(data, out, index) and evaluate that folder, "
                          "serve the program live with AdaptRec.from_index(index, ...), or use selection='none'",
                          cli=f"--program {config.program} needs {what}, and {config.data} has none: run `adaptrec "
                          "index neighbors --data ... --out ...` and evaluate that folder, or use --program none")
    if not isinstance(program, AdaptRec):
        lm = None
    elif not config.lm:  # also with an `lm` passed in: the manifest must name the model the run used
        raise ConfigError(NEEDS_LM, cli=NEEDS_LM_CLI)
    elif lm is None:
        lm = load_lm(config, progress)
    local = is_local(config.lm or "hf:")
    # what identifies the run (harness.run_identity) and what it was run with; unchanged since before
    # RunConfig existed, so older run folders still resume
    recorded = {"data": str(config.data), "data_hash": manifest.get("data_hash"), "split": config.split,
                "limit": config.limit, "examples": split.num_rows, "program": program_label(config.program),
                "program_config": program.config(), "lm": config.lm, "adapter": config.adapter,
                "api_base": config.api_base, "max_new_tokens": config.max_new_tokens, "seed": config.seed,
                **({"device": config.device} if config.device != "cpu" else {}),
                **({} if local else {"timeout": config.timeout, "num_retries": config.num_retries,
                                     "retries": config.retries, "threads": config.threads})}
    # every setting as resolved (command line, config file, defaults) and where a config file came from;
    # `out` is left out: it is the folder the manifest is in
    settings = {k: v for k, v in config.to_dict().items() if k != "out"}
    extra = {"run_config": settings, "config_file": os.fspath(config_file) if config_file is not None else None}
    rows = split.to_list()
    results = evaluate(program, rows, config.out, recorded, lm=lm, threads=config.threads, progress=progress,
                       data_manifest=manifest, retries=config.retries, extra=extra)
    if results.errors:  # the metrics cover only what was scored: not a finished run
        raise IncompleteRunError(f"{results.errors} of {results.n + results.errors} examples failed with "
                                 f"provider/transport errors (kept out of the metrics above); run the same command "
                                 f"again to retry them (finished examples in {config.out} are kept)",
                                 results=results)
    return results


def compare_runs(a: str | Path, b: str | Path) -> dict:
    """Paired comparison of two run folders (`metrics.paired_comparison`), after checking that each is a run
    folder with scored examples and that both scored the same split of the same prepared data.

    Raises:
        ConfigError: a folder is missing or holds no predictions, or the runs differ in split or data (named).
    """
    from adaptrec_prompts.evaluation.metrics import paired_comparison

    logs, configs = [], []
    for name, folder in (("A", Path(a)), ("B", Path(b))):
        if not folder.is_dir():
            raise ConfigError(f"run {name} {str(folder)!r}: no such folder; pass two run folders (adaptrec eval --out)")
        records = read_log(folder / "predictions.jsonl")
        if not records:
            raise ConfigError(f"run {name} {str(folder)!r} holds no predictions (no predictions.jsonl records): it is "
                              "not a run folder, or its run has not scored an example yet")
        scored = [r for r in records.values() if not r.get("error")]
        if not scored:
            raise ConfigError(f"run {name} {str(folder)!r}: all {len(records)} examples failed with provider errors; "
                              "rerun it (adaptrec eval with the same options) before comparing")
        manifest = folder / "manifest.json"
        try:
            configs.append(json.loads(manifest.read_text(encoding="utf-8")).get("config") or {})
        except (OSError, ValueError):
            configs.append({})
        logs.append(scored)
    split_a, split_b = configs[0].get("split"), configs[1].get("split")
    if split_a and split_b and split_a != split_b:
        raise ConfigError(f"the runs scored different splits: A {a} is {split_a!r}, B {b} is {split_b!r}; compare "
                          f"runs of one split (rerun one with --split {split_a})")
    hash_a, hash_b = configs[0].get("data_hash"), configs[1].get("data_hash")
    if hash_a and hash_b and hash_a != hash_b:
        raise ConfigError(f"the runs scored different prepared data: A {a} used {configs[0].get('data')!r}, B {b} "
                          f"used {configs[1].get('data')!r} (data_hash differs); compare runs made on one prepared "
                          "folder")
    try:
        return paired_comparison(*logs)
    except ValueError as exc:
        raise ConfigError(f"{a} vs {b}: {exc}") from None
