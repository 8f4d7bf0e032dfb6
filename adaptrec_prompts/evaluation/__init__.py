"""Evaluation: metrics, the harness, one run as a call (`RunConfig`/`run_eval`), baselines and reports."""
