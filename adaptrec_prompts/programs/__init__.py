"""Stages 2 and 3 as DSPy programs (above retrieval, which a live program calls; below the backends that run
them): one concept per module.

- `signatures`: the prompts, as DSPy signatures whose docstrings are the instructions.
- `chat_adapters`: how a signature becomes messages (`eval_adapter`, `CompactAdapter`; not LoRA adapters).
- `selector`: Stage 2, `UserSelector`.   `recommender`: Stage 3, `NextItemRecommender`.
- `adaptrec`: `AdaptRec` (1 -> 2 -> 3) and its live form (`AdaptRec.from_index`, `LiveAdaptRec`).
- `saving`: `save_program` / `load_program` (JSON: configuration and DSPy state).
- `parsing`: an LM answer -> a candidate (exact matching); `scoring`: score mode's log-likelihoods.
- `optimize`: compiling a program with DSPy optimizers (`adaptrec compile`, programs/compile.py).

The domain wording (`Template`, `load_template`) is data: `adaptrec_prompts.data.render`.
"""

from adaptrec_prompts._lazy import exports

_LAZY = {
    "AdaptRec": "adaptrec_prompts.programs.adaptrec",
    "LiveAdaptRec": "adaptrec_prompts.programs.adaptrec",
    "example_inputs": "adaptrec_prompts.programs.adaptrec",
    "UserSelector": "adaptrec_prompts.programs.selector",
    "NextItemRecommender": "adaptrec_prompts.programs.recommender",
    "save_program": "adaptrec_prompts.programs.saving",
    "load_program": "adaptrec_prompts.programs.saving",
    "SelectSimilarUsers": "adaptrec_prompts.programs.signatures",
    "RecommendNextItem": "adaptrec_prompts.programs.signatures",
    "RecommendNextItemZeroShot": "adaptrec_prompts.programs.signatures",
    "CompactAdapter": "adaptrec_prompts.programs.chat_adapters",
    "eval_adapter": "adaptrec_prompts.programs.chat_adapters",
    "parse_choice": "adaptrec_prompts.programs.parsing",
    "compile_program": "adaptrec_prompts.programs.optimize",
}
__all__ = list(_LAZY)
__getattr__, __dir__ = exports(__name__, _LAZY)
