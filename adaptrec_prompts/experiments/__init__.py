"""The paper's experiment drivers, on top of the library (next to the command line that runs them).

- `experiment`: `adaptrec experiment`, the paper's claims on one dataset as one resumable call
  (`Experiment`, `run_experiment`): baselines, zero-shot, random and retrieved users, an M sweep, a report.
- `pipeline`: `adaptrec pipeline`, the README's main job (`main_job`).

The fine-tuned experiment (`adaptrec sft-experiment`) lives with fine-tuning: `finetune.experiment`;
`adaptrec bench ...` in `benchmarks`. Until 0.1 `adaptrec_prompts.experiments` was the experiment module: its
other names still resolve here, with a DeprecationWarning.
"""

from adaptrec_prompts._lazy import exports

_LAZY = {
    "Experiment": "adaptrec_prompts.experiments.experiment",
    "run_experiment": "adaptrec_prompts.experiments.experiment",
    "main_job": "adaptrec_prompts.experiments.pipeline",
}
__all__ = list(_LAZY)
__getattr__, __dir__ = exports(__name__, _LAZY)
