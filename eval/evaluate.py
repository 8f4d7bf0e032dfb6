"""Evaluate a program or baseline on a frozen split: a thin entry point over `adaptrec eval`.

    python eval/evaluate.py --data artifacts/ml-100k-nb --program static --lm hf:artifacts/models/tiny \
        --mode score --out runs/static
    python eval/evaluate.py --data artifacts/ml-100k-nb --program baseline:sasrec --out runs/sasrec
"""

import sys

from adaptrec_prompts.cli.app import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
