"""Turn run folders into a markdown table (variants x metrics, 95% CIs, n) and PNG plots.

    python eval/report.py runs/ml100k/* --out docs/results/ml100k-baselines --title "ML-100K test, baselines"
    python eval/report.py runs/userknn-n* --out docs/results/userknn-sweep --sweep n_retrieve

The code lives in `adaptrec_prompts.evaluation.report` (also used by `adaptrec experiment`); this command line
in `adaptrec_prompts.cli.report`.
"""

import sys

from adaptrec_prompts.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
