"""Prompt iteration with DSPy optimizers: compile an AdaptRec program on train, select on valid.

Metric (`metric_fn`): "hr1" = 1 when the top-1 candidate is the target (invalid = 0; the harness's HR@1
per example); "hr1+valid" = hr1 + 0.1 x valid, which also rewards answers that parse, useful while a
model still writes unparseable answers (HR@1 alone gives no signal then). Optimizers:

- "mipro": MIPROv2 with demos off (max_bootstrapped_demos = max_labeled_demos = 0): instruction search only.
  Demonstrations for Stage 3 would each carry M similar users: instructions only.
- "bootstrap": BootstrapFewShot: demos from traces that pass the metric (generate mode only: score mode
  calls no predictor, so it leaves no trace to bootstrap from).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import dspy
from dspy.utils.exceptions import AdapterParseError

from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.programs.adaptrec import AdaptRec, example_inputs

OPTIMIZERS = ("mipro", "bootstrap")
METRICS = ("hr1", "hr1+valid")
INPUT_KEYS = ("history_titles", "candidate_ids", "candidate_titles", "neighbors", "example_id", "random_users")


def to_examples(rows) -> list[dspy.Example]:
    return [dspy.Example(**example_inputs(r), target_item_id=r["target_item_id"]).with_inputs(*INPUT_KEYS)
            for r in rows]


def metric_fn(name: str):
    """The compile metric, in DSPy's (example, pred, trace=None) shape."""
    if name not in METRICS:
        raise ConfigError(f"metric must be one of {METRICS}, got {name!r}")

    def metric(example, pred, trace=None) -> float:
        hit = float(bool(pred.valid) and list(pred.ranking)[:1] == [example.target_item_id])
        return hit + (0.1 * float(bool(pred.valid)) if name == "hr1+valid" else 0.0)

    metric.__name__ = name.replace("+", "_plus_")
    return metric


def compile_program(program: AdaptRec, trainset, valset, optimizer: str, metric: str = "hr1",
                    num_trials: int = 4, num_candidates: int = 3, max_demos: int = 2, prompt_lm=None,
                    seed: int = 0, threads: int = 1) -> AdaptRec:
    """Return a compiled copy of `program` (the input is not modified)."""
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    fn = metric_fn(metric)
    if optimizer == "bootstrap":
        if program.mode != "generate":
            raise ConfigError("bootstrap collects demos from generate-mode traces; compile with --mode generate")
        tp = dspy.BootstrapFewShot(metric=fn, max_bootstrapped_demos=max_demos, max_labeled_demos=0, max_rounds=1)
        return tp.compile(program, trainset=trainset)
    tp = dspy.MIPROv2(metric=fn, prompt_model=prompt_lm, auto=None, num_candidates=num_candidates,
                      max_bootstrapped_demos=0, max_labeled_demos=0, num_threads=threads, seed=seed,
                      verbose=False)
    try:
        return tp.compile(program, trainset=trainset, valset=valset, num_trials=num_trials, minibatch=False,
                          max_bootstrapped_demos=0, max_labeled_demos=0)
    except AdapterParseError as exc:
        raise ConfigError(f"MIPROv2's instruction proposer could not parse the prompt LM's answer ({exc.lm_response!r:.120}). "
                          "The prompt LM must follow DSPy's output format: pass a capable --prompt-lm (an API model or "
                          "a fine-tuned/instruction model), or use --optimizer bootstrap") from None


def call_budget(optimizer: str, stages: int, n_train: int, n_val: int, num_trials: int, num_candidates: int) -> int:
    """An upper-bound estimate of LM calls, printed before compiling."""
    if optimizer == "bootstrap":
        return n_train * stages
    proposals = 3 * num_candidates * stages  # program/data description + one call per instruction candidate
    return proposals + (num_trials + 1) * n_val * stages


def read_program_json(path: str | Path) -> dict:
    """A saved program's JSON (`save_program`), with a message naming the file when it cannot be one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{str(path)!r}: no such program file; pass a .json that `adaptrec compile` or "
                          "save_program() wrote")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a saved program (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); the file is "
                          "damaged or truncated: save or compile the program again") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict) or \
            not isinstance(payload.get("state"), dict):
        raise ConfigError(f"{path}: not a saved AdaptRec program (expected an object with \"config\" and "
                          "\"state\"); save or compile the program again")
    return payload


def diff_programs(a: str | Path, b: str | Path) -> str:
    """Human-readable differences between two saved programs: config, instructions, demos.

    Raises:
        ConfigError: a file is missing, not JSON (e.g. truncated) or not a saved program; the message names it.
    """
    pa, pb = (read_program_json(p) for p in (a, b))
    out = []
    for key in sorted(set(pa["config"]) | set(pb["config"])):
        if key != "template" and pa["config"].get(key) != pb["config"].get(key):
            out.append(f"config.{key}: {pa['config'].get(key)!r} -> {pb['config'].get(key)!r}")
    if pa["config"].get("template") != pb["config"].get("template"):
        out.append("config.template: changed")
    for name in sorted(set(pa["state"]) | set(pb["state"])):
        sa, sb = pa["state"].get(name) or {}, pb["state"].get(name) or {}
        if not isinstance(sa, dict) or "signature" not in sa and "signature" not in sb:
            continue
        ia = (sa.get("signature") or {}).get("instructions", "")
        ib = (sb.get("signature") or {}).get("instructions", "")
        if ia != ib:
            out.append(f"{name}: instructions changed")
            out.extend("    " + line.rstrip("\n") for line in difflib.unified_diff(
                ia.splitlines(), ib.splitlines(), "before", "after", lineterm=""))
        da, db = sa.get("demos") or [], sb.get("demos") or []
        if da != db:
            out.append(f"{name}: demos {len(da)} -> {len(db)}")
            for demo in db:
                if demo not in da:
                    out.append("    + " + json.dumps(demo, ensure_ascii=False)[:300])
            for demo in da:
                if demo not in db:
                    out.append("    - " + json.dumps(demo, ensure_ascii=False)[:300])
    return "\n".join(out) if out else "no differences"
