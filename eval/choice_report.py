"""Compare fine-tuning objectives by their choice diagnostics on validation rows (table + plot).

    python eval/choice_report.py runs/pilot/titles-answer/train/static runs/pilot/titles-listwise/train/static \
        --out docs/results/sft-objectives-ml-100k --title "ML-100K validation: which objective learns the choice?"

The code lives in `adaptrec_prompts.evaluation.report.choice_report`.
"""

import argparse
import shlex
import sys
from pathlib import Path

from adaptrec_prompts.evaluation.report import choice_report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("adapters", nargs="+", help="adapter folders trained with --diagnostics_rows N")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="choice diagnostics")
    args = p.parse_args(argv)
    command = "python eval/choice_report.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    try:
        out = choice_report([Path(a) for a in args.adapters], Path(args.out), args.title, command)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
