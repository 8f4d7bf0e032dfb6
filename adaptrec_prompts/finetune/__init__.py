"""Fine-tuning (above evaluation, which its experiment runs on the adapters): LoRA on the programs' own
prompts with TRL (needs the `finetune` extra for the trainer; the rows need only DSPy).

- `rows`: SFT rows rendered by the same adapter and signatures as inference (`build_rows`, `stage3_row`).
- `losses`: the objectives as TRL trainers: answer-only logits, listwise (`answer_only_trainer`,
  `listwise_trainer`).
- `callbacks`: self-adaptive selection, choice diagnostics, timed checkpoints.
- `trainer`: `AdaptRecSFTArguments` and `train`, what `finetune/sft.py` runs.
- `experiment`: `adaptrec sft-experiment`, fine-tuned AdaptRec vs a fine-tuned zero-shot model
  (`SFTExperiment`, `run`).
"""

from adaptrec_prompts._lazy import exports

_LAZY = {
    "build_rows": "adaptrec_prompts.finetune.rows",
    "stage3_row": "adaptrec_prompts.finetune.rows",
    "AdaptRecSFTArguments": "adaptrec_prompts.finetune.trainer",
    "train": "adaptrec_prompts.finetune.trainer",
    "SFTExperiment": "adaptrec_prompts.finetune.experiment",
}
__all__ = list(_LAZY)
__getattr__, __dir__ = exports(__name__, _LAZY)
