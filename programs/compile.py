"""Compile an AdaptRec program with a DSPy optimizer: a thin entry point over `adaptrec compile`.

    python programs/compile.py --data artifacts/ml-100k-nb --program static --optimizer mipro \
        --lm hf:artifacts/sft/tiny/base-model --adapter artifacts/sft/tiny --name static-mipro
    adaptrec programs diff programs/ml-100k/base.json programs/ml-100k/static-mipro.json
"""

import sys

from adaptrec_prompts.cli.app import main

if __name__ == "__main__":
    sys.exit(main(["compile", *sys.argv[1:]]))
