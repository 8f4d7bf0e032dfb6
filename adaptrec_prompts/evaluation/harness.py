"""The evaluation harness: any program (AdaptRec variant or baseline) x any backend x a frozen split.

Writes, in `out_dir`:
- `manifest.json` at start: resolved config, seeds, data manifest hash, program hash, package versions,
  git commit, adapter (never an API key). Re-running into the same folder requires the same config.
- `predictions.jsonl`: one line per example, flushed and fsync'd as soon as it is done (ids of the
  inputs, raw output, parsed ranking, valid flag, reason, error, tokens, latency, LM time). A re-run
  skips finished examples (errored ones are retried); an interrupted run loses nothing.
- `results.json`: metrics with 95% bootstrap CIs and n (metrics.aggregate; resampled by user when a
  user has several rows), errors, tokens, cost, LM seconds vs total seconds (the share of time outside LM
  calls is the harness overhead).

Errors: only transport/provider failures (`is_transport_error`: timeouts, connection errors, rate limits,
5xx) are retried (`retries` times with backoff; a timeout is not, dspy.LM retried it already) and, if they
persist, logged as the example's `error`, left out of every mean and retried on resume. A provider error
no retry fixes (a refused key, a wrong URL or model, a reply that is not a chat completion) stops the run
with a `ProviderError` that says which. Any other exception is a bug or a bad input, not a flaky
provider: the run stops with its traceback, and every finished example is already on disk. A run folder
this call created is removed again when the run stops before its first prediction (it holds no run), and
a folder holding a manifest but no prediction is started afresh. An API request still waiting after half
its timeout (at most 10 s) is reported (`slow request: ...`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import subprocess
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import dspy
from dspy.utils.usage_tracker import track_usage

from adaptrec_prompts.errors import DISK_FULL, ConfigError, DiskFullError, Interrupted, ProviderError
from adaptrec_prompts.evaluation.metrics import RESULTS_SCHEMA_VERSION, aggregate, example_metrics
from adaptrec_prompts.evaluation.results import Results, read_log
from adaptrec_prompts.programs.adaptrec import AdaptRec
from adaptrec_prompts.programs.chat_adapters import eval_adapter
from adaptrec_prompts.utils import timing
from adaptrec_prompts.utils.progress import bar as progress_bar

logger = logging.getLogger(__name__)
PACKAGES = ("adaptrec-prompts", "dspy", "datasets", "transformers", "torch", "peft", "trl", "chromadb", "litellm")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """HEAD of the package's checkout, with "+dirty" when tracked files have uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=here)
        commit = head.stdout.strip()
        return (commit + ("+dirty" if dirty.stdout.strip() else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def program_state(program) -> dict:
    """A JSON description of a program (config + DSPy state for AdaptRec; config for baselines)."""
    if isinstance(program, AdaptRec):
        state = {"class": "AdaptRec", "config": program.config(), "state": program.dump_state()}
        if getattr(program, "retriever", None) is not None:  # live Stage 1 (AdaptRec.from_index)
            state["retriever"] = program.retriever.describe()
        return state
    state = {"class": type(program).__name__, "config": program.config()}
    if hasattr(program, "training_record"):  # a baseline trained here (SASRec): its seconds and loss, not its identity
        state["training"] = program.training_record()
    return state


def _program_hash(state: dict) -> str:
    """The program's identity for resume: its state without how long its training took."""
    return _sha({k: v for k, v in state.items() if k != "training"})


def _sha(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def predict_row(program, row: dict) -> dict:
    """Run one program on one prepared row; the uniform output the harness logs."""
    if isinstance(program, AdaptRec):
        pred = program(**program.row_inputs(row))
        out = {"raw": pred.raw, "answer": pred.answer, "ranking": list(pred.ranking), "valid": bool(pred.valid),
               "reason": pred.reason, "selection": pred.selection, "top_title": pred.top_title}
        if getattr(program, "retriever", None) is not None:  # live Stage 1: log the neighbours it retrieved
            out["neighbor_example_ids"] = list(pred.neighbor_example_ids)
        return out
    out = program.predict_row(row)
    if sorted(out["ranking"]) != sorted(row["candidate_item_ids"]):  # a baseline ranks every candidate once
        raise ValueError(f"{type(program).__name__} returned a ranking of {len(out['ranking'])} items for example "
                         f"{row['example_id']} that is not a permutation of its {len(row['candidate_item_ids'])} "
                         "candidates: a bug in the baseline")
    return out


class _Log:
    """The predictions log: one JSON line per record, flushed and fsync'd. A torn last line (a kill in the
    middle of a write) is cut off before anything is appended, so the file stays valid JSON Lines."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        if path.is_file() and path.stat().st_size:
            data = path.read_bytes()
            if not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                try:  # a whole record whose newline was not written yet: keep it, finish the line
                    json.loads(data[keep:].decode("utf-8"))
                    with open(path, "ab") as handle:
                        handle.write(b"\n")
                except ValueError:  # JSONDecodeError and UnicodeDecodeError alike: a torn record
                    logger.warning("%s: dropping an incomplete last line (%d bytes) before appending", path,
                                   len(data) - keep)
                    with open(path, "r+b") as handle:
                        handle.truncate(keep)

    def write(self, record: dict) -> None:
        data = memoryview((json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8"))
        with self.lock, disk_full_named(self.path), open(self.path, "ab", buffering=0) as handle:
            start = handle.seek(0, os.SEEK_END)
            try:
                while data:  # an unbuffered write may take part of the line; the rest raises on a full disk
                    data = data[handle.write(data):]
                os.fsync(handle.fileno())
            except OSError:  # a partial line is on disk: cut it, so the log stays valid JSON Lines
                handle.truncate(start)
                raise


class disk_full_named:
    """Context manager: an OSError that says the disk is full becomes a DiskFullError naming `path`."""

    def __init__(self, path: Path, what: str = "finished examples are kept; run the same command again"):
        self.path, self.what = path, what

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, OSError) and not isinstance(exc, DiskFullError) and exc.errno in DISK_FULL:
            raise DiskFullError(f"no space left writing {self.path} ({exc.strerror}): free disk space or choose "
                                f"another folder; {self.what}", exc.errno) from None
        return False


# Exception class names (anywhere in the MRO) that mean "the provider or the network failed": DSPy's own
# (dspy.utils.exceptions), its vendored lm15 client's, litellm's, openai's, httpx's and the standard library's.
# Not litellm's APIConnectionError as such: litellm also maps unrelated client bugs to it; it counts when its
# cause is one of these.
TRANSPORT_ERRORS = frozenset({
    "TimeoutError", "ConnectionError", "LMTransportError", "LMRateLimitError", "LMTimeoutError", "LMServerError",
    "Timeout", "APITimeoutError", "RateLimitError", "ServiceUnavailableError", "InternalServerError",
    "BadGatewayError", "TransportError", "TimeoutException", "ConnectError", "ReadTimeout", "ReadError",
    "RemoteProtocolError",
})


def is_transport_error(exc: BaseException) -> bool:
    """True for timeouts, connection failures, rate limits (429) and server errors (5xx), also when wrapped
    (only explicit causes, `raise ... from`, are followed: an error raised while handling a timeout is not a
    timeout); False otherwise."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if any(cls.__name__ in TRANSPORT_ERRORS for cls in type(exc).__mro__):
            return True
        status = getattr(exc, "status_code", None)
        if isinstance(status, int) and (status in (408, 429) or status >= 500):
            return True
        exc = exc.__cause__
    return False


def is_timeout(exc: BaseException) -> bool:
    """True for a request that timed out (also when wrapped by an explicit cause)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if any("Timeout" in cls.__name__ for cls in type(exc).__mro__):
            return True
        exc = exc.__cause__
    return False


def _run_one(program, row: dict, lm, callbacks, retries: int = 2, backoff: float = 1.0) -> dict:
    started = time.perf_counter()
    base = {"example_id": row["example_id"], "user_id": row.get("user_id"), "target_item_id": row["target_item_id"],
            "history_item_ids": row["history_item_ids"], "candidate_item_ids": row["candidate_item_ids"],
            "neighbor_example_ids": (row.get("neighbor_example_ids") or [])}
    attempts = retried = 0  # failed attempts; retries actually made (a timeout is not retried)
    with timing.measure() as clock, track_usage() as usage:
        while True:
            try:
                with dspy.context(lm=lm, adapter=eval_adapter(), callbacks=callbacks):
                    out = predict_row(program, row)
                error = None
                break
            except Exception as exc:
                if not is_transport_error(exc):
                    from adaptrec_prompts.backends.api import explain_lm_error

                    message = explain_lm_error(exc, getattr(lm, "model", None), (getattr(lm, "kwargs", None)
                                                                                 or {}).get("api_base"))
                    if message:  # a key, URL or model name no retry fixes: say which, without the traceback
                        raise ProviderError(message) from exc
                    raise  # a bug or bad input: stop with the traceback (finished examples are on disk)
                attempts += 1
                # dspy.LM has already retried a timed-out request (num_retries): another round here would
                # multiply the wait (timeout x attempts x retries) for a server that does not answer
                if attempts > retries or is_timeout(exc):
                    out = {"raw": None, "answer": None, "ranking": [], "valid": False, "reason": ""}
                    error = repr(exc)[:500]
                    break
                logger.warning("%s: %s; retry %d/%d", row["example_id"], repr(exc)[:200], attempts, retries)
                retried += 1
                time.sleep(backoff * 2 ** (attempts - 1))
    tokens = {"prompt_tokens": clock.prompt_tokens, "completion_tokens": clock.completion_tokens}
    for totals in usage.get_total_tokens().values():
        tokens["prompt_tokens"] += int(totals.get("prompt_tokens") or 0)
        tokens["completion_tokens"] += int(totals.get("completion_tokens") or 0)
    record = {**base, **out, "error": error, "retries": retried, **tokens,
              "latency_s": time.perf_counter() - started, "lm_seconds": clock.lm_seconds}
    record.update(example_metrics(record["ranking"], row["target_item_id"], record["valid"]))
    return record


def evaluate(program, rows, out_dir: str | Path, config: dict | None = None, lm=None, threads: int = 1,
             progress: bool = True, data_manifest: dict | None = None, retries: int = 2,
             backoff: float = 1.0, extra: dict | None = None) -> Results:
    """Run `program` on every row (a datasets split or list of dicts), resuming from `out_dir`.

    Args:
        program: an AdaptRec or a baseline (anything with `predict_row(row)` and `config()`).
        rows: the frozen examples.
        out_dir: run folder (created; reused for resume when its manifest config matches).
        config: the resolved run configuration to record (no secrets); its identity keys must match when a
            run is resumed. None records none (the program's config and state are recorded anyway).
        lm: the dspy LM (None for baselines).
        threads: parallel examples (for API backends; keep 1 for a local model).
        progress: show a bar (named after `out_dir`: examples done, rate, time left, running HR@1 and
            errors) when `progress.enabled` allows (a terminal, not CI).
        retries: retries of an example after a transport error (with `backoff` * 2^k seconds between).
        extra: more manifest entries that describe the run without identifying it (`run_eval` records every
            resolved setting and the config file); a rerun that changes them records the latest.

    Returns:
        A `results.Results` (what `run_eval` returns too): `.metrics`, `.n`, `.errors`, `.to_pandas()` over these
        rows, and a read-only mapping over the dict written to `out_dir/results.json` (`results["metrics"]`).
    """
    out = Path(out_dir)
    config = {} if config is None else config
    rows = list(rows)
    if not rows:
        raise ConfigError(f"no examples to evaluate for {out}: the split (after --limit) has 0 rows; check --split, "
                          "--limit and that the prepared folder holds data")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with _RunLock(out):
            raw = _evaluate(program, rows, out, config, lm, threads, progress, data_manifest, retries, backoff,
                            json.loads(json.dumps(extra or {}, default=str)))
    except BaseException:
        if created:  # a failed start (a refused key, a full disk) leaves no folder that looks like a run
            _remove_if_not_a_run(out)
        raise
    return Results(out, raw, tuple(row["example_id"] for row in rows))


def _remove_if_not_a_run(out: Path) -> None:
    """Remove a run folder this call created when it holds no prediction (only its manifest and lock)."""
    if read_log(out / "predictions.jsonl"):
        return
    for name in ("manifest.json", "manifest.json.tmp", "predictions.jsonl", "results.json.tmp", ".lock"):
        (out / name).unlink(missing_ok=True)
    try:
        out.rmdir()
    except OSError:  # something else is in it: leave it
        pass


class _SlowRequests:
    """Says when an API request is slow: a line when an LM call has waited `first` seconds (half the
    timeout, at most 10 s), again each time the wait doubles, with the most it can take (timeout x attempts,
    dspy.LM's backoff included) and the options that bound it."""

    def __init__(self, timer: timing.LMTimer, lm):
        from adaptrec_prompts.backends.api import base_url, request_time_bound

        kwargs = getattr(lm, "kwargs", None) or {}
        self.timer, self.timeout = timer, kwargs.get("timeout")
        self.enabled = isinstance(self.timeout, (int, float)) and self.timeout > 0
        if not self.enabled:  # local models (no timeout) are never "slow requests"
            return
        retries = int(getattr(lm, "num_retries", 0) or 0)
        server = base_url(kwargs.get("api_base"))
        self.what = f"{getattr(lm, 'model', 'the LM')}" + (f" at {server}" if server else "")
        self.limits = (f"each attempt gives up after {self.timeout:g} s (--timeout), {retries + 1} attempts "
                       f"(--num-retries {retries}): at most {request_time_bound(self.timeout, retries):.0f} s")
        self.first = min(10.0, self.timeout / 2)
        self.next: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="adaptrec-slow-requests", daemon=True)

    def __enter__(self):
        if self.enabled:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.stop.set()
            self.thread.join(timeout=5)

    def _watch(self) -> None:
        while not self.stop.wait(min(0.25, self.first / 2)):
            waiting = self.timer.in_flight()
            self.next = {k: v for k, v in self.next.items() if k in waiting}
            for call_id, seconds in waiting.items():
                if seconds >= self.next.get(call_id, self.first):
                    self.next[call_id] = 2 * seconds
                    logger.warning("slow request: %s has not answered after %.0f s (%s)", self.what, seconds,
                                   self.limits)


def _RunLock(folder: Path):  # noqa: N802 - used as a context manager class
    """An exclusive lock on a run folder (`.lock`, holding the owner's pid), so two processes never append to
    one predictions log: `prepare.OutputLock` on the folder's own lock file."""
    from adaptrec_prompts.data.prepare import OutputLock

    return OutputLock(folder, Path(folder) / ".lock",
                      busy="{out} is in use by {owner}; wait for it to finish or choose another --out")


def _evaluate(program, rows: list, out: Path, config: dict, lm, threads: int, progress: bool,
              data_manifest: dict | None, retries: int, backoff: float, extra: dict) -> dict:
    manifest = {
        "results_schema_version": RESULTS_SCHEMA_VERSION,
        "config": config,
        "config_hash": _sha(config),
        "program": program_state(program),
        "program_hash": _program_hash(program_state(program)),
        "data_manifest_hash": _sha(data_manifest) if data_manifest else None,
        "data_hash": (data_manifest or {}).get("data_hash"),
        "adapter": "ChatAdapter(use_json_adapter_fallback=False)",
        "versions": package_versions(),
        "git_commit": git_commit(),
    }
    if set(extra) & set(manifest):
        raise ValueError(f"extra manifest entries {sorted(set(extra) & set(manifest))} would replace the harness's own")
    manifest.update(extra)
    manifest_path = out / "manifest.json"
    # a folder with no prediction is not a run (a start that failed at its first request): a new start replaces it
    if manifest_path.is_file() and read_log(out / "predictions.jsonl"):
        old = json.loads(manifest_path.read_text(encoding="utf-8"))
        if (run_identity(old["config"]), old["program_hash"]) != (run_identity(config), manifest["program_hash"]):
            raise ConfigError(f"{out} holds a run with a different config or program; resume only the same run, "
                              "or choose another --out")
        old_loss = (old["program"].get("training") or {}).get("final_loss")
        new_loss = (manifest["program"].get("training") or {}).get("final_loss")
        if old_loss is not None and new_loss is not None and old_loss != new_loss:
            # retrained with the same settings and seed, yet not the same model (another thread count or torch):
            # the examples still to run would be scored by a slightly different model than those already done
            warnings.warn(f"{out}: the baseline retrained to final loss {new_loss}, not the {old_loss} of the model "
                          "that scored the examples already done; rerun into a new --out for a single model",
                          stacklevel=3)
        # same run, another example limit (or other non-identifying settings): record the latest
        if old["config_hash"] != manifest["config_hash"] or any(old.get(k) != v for k, v in extra.items()):
            old.update(config=config, config_hash=manifest["config_hash"], **extra)
            _write_json(manifest_path, old)
    else:
        _write_json(manifest_path, manifest)
    log_path = out / "predictions.jsonl"
    log = _Log(log_path)  # repairs a torn last line before anything reads the log
    done = {k: r for k, r in read_log(log_path).items() if not r.get("error")}
    todo = [row for row in rows if row["example_id"] not in done]
    callbacks = [timing.LMTimer()]
    logger.info("%d examples, %d already done, %d to run", len(rows), len(done), len(todo))
    # named after the run folder, so the variants of an experiment tell their bars apart
    bar = progress_bar(desc=out.name, total=len(rows), initial=len(rows) - len(todo), unit="example",
                       progress=progress)
    hits = [r["hit1"] for r in done.values()]
    started = time.perf_counter()

    def finish(record: dict) -> None:
        log.write(record)
        done[record["example_id"]] = record
        if not record["error"]:
            hits.append(record["hit1"])
        if not bar.disable:  # a running HR@1 and the errors so far, next to the count and the rate
            bar.set_postfix(HR1=f"{sum(hits) / max(1, len(hits)):.3f}", errors=sum(
                1 for r in done.values() if r["error"]), refresh=False)
        bar.update(1)

    try:
        with _SlowRequests(callbacks[0], lm):  # a line when an API request is slow
            if threads > 1:  # every finished example is written, in completion order, before a failure propagates
                pool = ThreadPoolExecutor(max_workers=threads)
                futures = [pool.submit(_run_one, program, r, lm, callbacks, retries, backoff) for r in todo]
                failure, written = None, set()
                try:
                    for future in as_completed(futures):
                        written.add(future)
                        if future.cancelled():
                            continue
                        if future.exception() is None:
                            finish(future.result())
                        elif failure is None:
                            failure = future.exception()
                            for other in futures:
                                other.cancel()
                except KeyboardInterrupt:  # keep what finished meanwhile; do not wait for calls in flight
                    for future in futures:
                        future.cancel()
                        if (future.done() and future not in written and not future.cancelled()
                                and future.exception() is None):
                            finish(future.result())
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
                pool.shutdown(wait=True, cancel_futures=True)
                if failure is not None:
                    raise failure
            else:
                for row in todo:
                    finish(_run_one(program, row, lm, callbacks, retries, backoff))
    except KeyboardInterrupt:  # what is on disk, whatever instruction the signal interrupted
        saved = sum(1 for r in read_log(log_path).values() if not r.get("error"))
        raise Interrupted(f"{saved} of {len(rows)} examples are saved in {out}; run the same command again to "
                          "resume") from None
    finally:
        bar.close()
    wall = time.perf_counter() - started
    records = [done[row["example_id"]] for row in rows if row["example_id"] in done]
    results = summarize(records, config.get("lm"))
    results["wall_seconds_last_invocation"] = wall
    _write_json(out / "results.json", results)
    return results


# Keys that select which frozen examples run, not how each one is predicted: a run may grow or shrink
# along them (--limit 20, then --limit 95 resumes and runs the other 75).
# config keys that do not change any prediction: which rows, and how requests are sent (a rerun may change them)
NON_IDENTITY_KEYS = ("limit", "examples", "timeout", "num_retries", "retries", "threads")


def run_identity(config: dict) -> str:
    """Hash of the parts of a run config that change per-example predictions."""
    return _sha({k: v for k, v in config.items() if k not in NON_IDENTITY_KEYS})


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with disk_full_named(path):
            tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    except DiskFullError:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def top1_positions(records: Sequence[dict]) -> dict:
    """Where in the candidate list each scored example's top-1 sits: counts per 1-based position, the share
    at position 1, the most common position and its share, and `flag` when that share is above 3x chance
    (3/K) and beyond what chance gives on n examples (exact binomial tail, Bonferroni over the K positions,
    below 0.01): a ranker that mostly picks one list position is reading the list, not the user."""
    from scipy.stats import binom

    counts: list[int] = []
    for r in records:
        if r.get("error") or not r.get("ranking"):
            continue
        cands = r["candidate_item_ids"]
        counts.extend([0] * (len(cands) - len(counts)))
        counts[cands.index(r["ranking"][0])] += 1
    total = sum(counts)
    if not total:
        return {"counts": counts, "n": 0}
    top = max(range(len(counts)), key=lambda i: (counts[i], -i))
    share = counts[top] / total
    p_value = min(1.0, len(counts) * float(binom.sf(counts[top] - 1, total, 1 / len(counts))))
    return {"counts": counts, "n": total, "share_at_1": counts[0] / total, "most_common": top + 1,
            "most_common_share": share, "p_value": p_value, "flag": share > 3 / len(counts) and p_value < 0.01}


def summarize(records: Sequence[dict], lm_name: str | None = None) -> dict:
    """results.json content from per-example records."""
    agg = aggregate(records)
    lm_seconds = sum(r["lm_seconds"] for r in records)
    total_seconds = sum(r["latency_s"] for r in records)
    prompt_tokens = sum(r["prompt_tokens"] for r in records)
    completion_tokens = sum(r["completion_tokens"] for r in records)
    return {
        "results_schema_version": RESULTS_SCHEMA_VERSION,
        "n": agg["n"],
        "errors": agg["errors"],
        "metrics": agg["metrics"],
        "invalid": sum(1 for r in records if not r["error"] and not r["valid"]),
        "retries": sum(r.get("retries", 0) for r in records),
        "resampling": agg["resampling"],
        "top1_position": top1_positions(records),
        "lm_seconds": lm_seconds,
        "total_seconds": total_seconds,
        "overhead_share": (1 - lm_seconds / total_seconds) if total_seconds and lm_seconds else None,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cost_usd": estimate_cost(lm_name, prompt_tokens, completion_tokens),
    }


def estimate_cost(lm_name: str | None, prompt_tokens: int, completion_tokens: int) -> float | None:
    """USD from litellm's (local) price map; None for local models or unknown names."""
    from adaptrec_prompts.backends.api import is_local

    if not lm_name or is_local(lm_name):
        return None
    try:
        import litellm

        p, c = litellm.cost_per_token(model=lm_name, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        return float(p + c)
    except Exception:  # unknown model in the price map
        return None
