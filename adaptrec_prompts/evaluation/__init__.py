"""Evaluation (after the programs and backends it runs): metrics, the harness, one run as a call, baselines,
reports.

- `metrics`: HR@1, NDCG@5, ValidRatio, bootstrap CIs and paired tests (one definition).
- `harness`: `evaluate(program, rows, out)`: any program x any backend x a frozen split, resumable run folder.
- `runs`: `RunConfig` / `run_eval` (= `adaptrec eval`).
- `results`: `Results`, what `evaluate` and `run_eval` return (a run folder's scores and predictions).
- `baselines/`: Random, Popularity, UserKNN, SASRec and demo-match, scored like any program.
- `report`: run folders -> markdown tables and plots (`eval/report.py`, `adaptrec experiment`).

Until 0.1 `adaptrec_prompts.evaluation` was the harness module: its other names still resolve here, with a
DeprecationWarning (`adaptrec_prompts.evaluation.harness` is their home).
"""

from adaptrec_prompts._lazy import exports

_LAZY = {
    "evaluate": "adaptrec_prompts.evaluation.harness",
    "read_log": "adaptrec_prompts.evaluation.results",
    "RunConfig": "adaptrec_prompts.evaluation.runs",
    "run_eval": "adaptrec_prompts.evaluation.runs",
    "Results": "adaptrec_prompts.evaluation.results",
    "compare_runs": "adaptrec_prompts.evaluation.runs",
    "aggregate": "adaptrec_prompts.evaluation.metrics",
    "paired_comparison": "adaptrec_prompts.evaluation.metrics",
}
__all__ = list(_LAZY)
__getattr__, __dir__ = exports(__name__, _LAZY)
