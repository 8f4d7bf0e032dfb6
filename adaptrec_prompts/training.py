"""Fine-tuning pieces shared by `finetune/sft.py` and `adaptrec bench sft` (needs the `finetune` extra).

- `tokenize_fn`: a prompt-completion row tokenized exactly as the local engine reads the prompt at
  inference (its own `prompt_ids`), completion + EOS, loss on the completion only.
- `AnswerOnlyLogitsSFTTrainer` (from `answer_only_trainer()`): TRL's `SFTTrainer` whose loss projects
  through the LM head only at the positions whose next token is trained. TRL's fused LM head does that on
  Triton devices, but on a CPU it projects every position and masks afterwards, and the vocabulary head is
  most of a small model (Gemma 3 270M: 168M of 268M parameters, a 262k-token vocabulary): on a 600-token
  AdaptRec prompt with a 10-token answer, >98% of that work is thrown away. The loss is the same (the
  mean negative log-likelihood of the completion tokens, normalised like TRL by `num_items_in_batch`);
  TRL's per-token entropy and accuracy metrics are not computed.
"""

from __future__ import annotations

from collections.abc import Callable


def tokenize_fn(model, tokenizer, prompt_format: str = "auto") -> Callable[[dict], dict]:
    """A function mapping a conversational prompt-completion row to {"input_ids", "labels"}: the prompt as
    `HFEngine.prompt_ids` renders it (chat template with generation prompt, or the plain rendering for base
    models), then the assistant text and EOS; labels are -100 on the prompt."""
    from adaptrec_prompts.backends.hf import HFEngine

    engine = HFEngine(model, tokenizer, prompt_format=prompt_format)

    def tokenize(row: dict) -> dict:
        prompt = engine.prompt_ids(row["prompt"])
        completion = tokenizer(row["completion"][0]["content"], add_special_tokens=False)["input_ids"]
        completion = completion + [tokenizer.eos_token_id]
        return {"input_ids": prompt + completion, "labels": [-100] * len(prompt) + completion}

    return tokenize


def timed_checkpoints(minutes: float):
    """A TrainerCallback that asks the trainer to save a checkpoint whenever `minutes` have passed since the
    last one (or the start): a run killed at any point loses at most that much work."""
    import time

    from transformers import TrainerCallback

    class TimedCheckpoints(TrainerCallback):
        def __init__(self):
            self.last = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() - self.last >= minutes * 60:
                control.should_save = True
            return control

        def on_save(self, args, state, control, **kwargs):
            self.last = time.monotonic()
            return control

    return TimedCheckpoints()


def last_checkpoint(output_dir) -> str | None:
    """The newest `checkpoint-N` folder in `output_dir` (what a resumed run continues from), or None."""
    from pathlib import Path

    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None


def loss_curve(log_history: list[dict], path, title: str) -> None:
    """Training loss against step (from the trainer's log history) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([p for p, _ in points], [v for _, v in points], marker="." if len(points) < 50 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (answer tokens)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def answer_only_loss(model, inputs: dict, num_items_in_batch=None):
    """(loss, model output): mean NLL of the labelled tokens, with logits computed only at the positions
    that predict one (`logits_to_keep` = those positions, the union over the batch)."""
    import torch

    labels = inputs["labels"]
    shifted = labels[:, 1:]  # logits at position t predict token t + 1
    keep = (shifted != -100).any(dim=0).nonzero(as_tuple=True)[0]
    forward = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
    out = model(**forward, use_cache=False, logits_to_keep=keep)
    logits = out.logits.float()
    target = shifted[:, keep]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                            ignore_index=-100, reduction="sum")
    count = (target != -100).sum() if num_items_in_batch is None else num_items_in_batch
    return nll / torch.as_tensor(count, device=nll.device).clamp(min=1), out


def answer_only_trainer():
    """The `AnswerOnlyLogitsSFTTrainer` class (built on first use: trl is an optional dependency)."""
    global _TRAINER
    if _TRAINER is None:
        from trl import SFTTrainer

        class AnswerOnlyLogitsSFTTrainer(SFTTrainer):
            """`SFTTrainer` whose loss computes vocabulary logits only where a label is trained (module
            docstring); everything else (data, PEFT, optimisation, checkpoints, logging) is TRL's."""

            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                loss, out = answer_only_loss(model, inputs, num_items_in_batch)
                return (loss, out) if return_outputs else loss

        _TRAINER = AnswerOnlyLogitsSFTTrainer
    return _TRAINER


_TRAINER = None
