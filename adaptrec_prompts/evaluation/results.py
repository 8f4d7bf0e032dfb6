"""What a run folder holds once scored: `Results` (results.json, with the predictions log as a DataFrame),
the log reader (`read_log`) and the one-line summary the command line prints (`format_results`).

Both `evaluate` (the harness) and `run_eval` return a `Results`. Imports nothing heavy (pandas when a
DataFrame is asked for).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

from adaptrec_prompts.errors import ConfigError


def read_log(path: Path) -> dict[str, dict]:
    """Last record per example id from a predictions log (a torn last line from a kill is ignored)."""
    records: dict[str, dict] = {}
    if path.is_file():
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                records[record["example_id"]] = record
    return records


class Results(Mapping):
    """What a run scored: `.metrics`, `.n`, `.errors`, `.path`, `.to_pandas()`.

    It is also a read-only mapping over the results.json dict (`results["metrics"]`, `.raw` for the dict
    itself), so code written against the dict `adaptrec eval` used to return keeps working.

    Attributes:
        path: the run folder.
        raw: the results dict, as written to results.json.
        example_ids: the examples this call covered, in split order (None: every example in the log).
    """

    def __init__(self, path: str | Path, raw: dict, example_ids: tuple[str, ...] | None = None):
        self.path = Path(path)
        self.raw = raw
        self.example_ids = example_ids

    @classmethod
    def load(cls, path: str | Path) -> Results:
        """The results of a finished run folder (its results.json; every example of its log)."""
        file = Path(path) / "results.json"
        if not file.is_file():
            raise ConfigError(f"{file} not found: {path} is not a finished run folder (adaptrec eval --out)")
        return cls(path, json.loads(file.read_text(encoding="utf-8")))

    @property
    def metrics(self) -> dict:
        """Metric name -> {"value", "ci_low", "ci_high"} (95% bootstrap CIs), over the scored examples."""
        return self.raw["metrics"]

    @property
    def n(self) -> int:
        """Examples scored (errored examples are not)."""
        return self.raw["n"]

    @property
    def errors(self) -> int:
        """Examples that failed on provider/transport errors (left out of the metrics; a rerun retries them)."""
        return self.raw["errors"]

    def to_pandas(self):
        """One row per example from predictions.jsonl (its last record): ids, raw output, ranking, valid,
        error, tokens, latency and the per-example metrics (hit1, ndcg5, ...). Errored examples are
        included, with their `error`; the metrics leave them out."""
        import pandas as pd

        records = read_log(self.path / "predictions.jsonl")
        ids = list(records) if self.example_ids is None else [i for i in self.example_ids if i in records]
        return pd.DataFrame([records[i] for i in ids])

    def __getitem__(self, key: str):
        return self.raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def __repr__(self) -> str:
        return f"Results({format_results(str(self.path), self)!r})"


def format_results(name: str, results: Mapping) -> str:
    """One line: n, errors, every metric with its CI, and the harness overhead."""
    parts = [f"{name}: n={results['n']} errors={results['errors']}"]
    for key, m in results["metrics"].items():
        parts.append(f"{key}={m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]")
    if results.get("overhead_share") is not None:
        parts.append(f"overhead={100 * results['overhead_share']:.1f}% of {results['total_seconds']:.1f}s")
    return " ".join(parts)
