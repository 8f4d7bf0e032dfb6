# /// script
# dependencies = ["adaptrec-prompts[finetune]"]
# ///
"""Supervised fine-tuning of a causal LM (LoRA) on AdaptRec Stage-3 prompts rendered by the DSPy adapter.

Tiny offline run (CPU, builds a small Llama and a tokenizer from the data; no hub):

    python finetune/sft.py --config finetune/configs/tiny-cpu.yaml \\
        --data artifacts/ml-100k-nb --output_dir artifacts/sft/tiny
    adaptrec eval --data artifacts/ml-100k-nb --program static --lm hf:artifacts/sft/tiny/base-model \\
        --adapter artifacts/sft/tiny --mode score --out runs/tiny-sft

The paper's setting (Llama-2-7B, LoRA r=16 on all attention and MLP projections, GPU):

    python finetune/sft.py --config finetune/configs/llama2-7b-ml-100k.yaml --data artifacts/ml-100k-nb \\
        --model_name_or_path /models/Llama-2-7b-hf --output_dir artifacts/sft/llama2-ml
    accelerate launch finetune/sft.py --config ...   # several GPUs

Rows are TRL conversational prompt-completion rows from `adaptrec_prompts.finetune.rows` (loss on the
completion only). `--selection adaptive` makes the selection self-adaptive: the model being trained
re-selects the demonstrations of upcoming examples every `--selection_refresh_steps` steps (score mode:
each pool user is ranked by the log-likelihood of being named first in the Stage-2 answer), and the
callback records how often the selection changed. `--selection static` (embedding top-M) is the default.
YAML keys unknown to the dataclasses are fatal (TrlParser's strict default).
"""

from __future__ import annotations

# the script's names, for callers and tests
from adaptrec_prompts.finetune.callbacks import SelfAdaptiveSelection  # noqa: F401
from adaptrec_prompts.finetune.losses import tokenize_fn
from adaptrec_prompts.finetune.trainer import AdaptRecSFTArguments, split_rows_with_demonstrations, train  # noqa: F401


def make_parser():
    from trl import ModelConfig, SFTConfig, TrlParser

    return TrlParser((AdaptRecSFTArguments, SFTConfig, ModelConfig))


def _tokenizer_fn(model, tokenizer, prompt_format: str = "auto"):
    """`adaptrec_prompts.finetune.losses.tokenize_fn` under the script's older name."""
    return tokenize_fn(model, tokenizer, prompt_format)


def main(script_args: AdaptRecSFTArguments, training_args, model_args) -> dict:
    return train(script_args, training_args, model_args)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
