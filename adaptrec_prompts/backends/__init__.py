"""LM backends (above the programs they run, below the evaluation that runs them). Nothing heavy is imported
here: `hf` imports torch/transformers when used.

- API models: `api_lm("openai/gpt-4o")` or any `dspy.LM` (keys come from the environment); `make_lm(spec)`
  turns an `--lm` spec into an LM (`api`).
- Local Hugging Face models: `hf_lm(path, adapter=...)` -> a `dspy.LM` over `HFEngine` (generate + score),
  with a peft LoRA adapter folder checked first (`lora`).
- `tiny`: tiny Llamas built locally; `gemma`: the Gemma 3 270M preset; `llamacpp`: a llama.cpp server.
"""

from adaptrec_prompts.backends.api import api_lm, make_lm

__all__ = ["api_lm", "hf_lm", "make_lm"]


def hf_lm(model_path, **kwargs):
    """A `dspy.LM` backed by a local Hugging Face causal LM (see `backends.hf.HFEngine`)."""
    from adaptrec_prompts.backends.hf import hf_lm as _hf_lm

    return _hf_lm(model_path, **kwargs)
