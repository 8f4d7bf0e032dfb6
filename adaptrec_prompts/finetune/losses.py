"""The fine-tuning objectives, as TRL trainers (needs the `finetune` extra; trl is imported on first use).

- `tokenize_fn`: a prompt-completion row tokenized exactly as the local engine reads the prompt at
  inference (its own `prompt_ids`), completion + EOS, loss on the completion only.
- `AnswerOnlyLogitsSFTTrainer` (from `answer_only_trainer()`): TRL's `SFTTrainer` whose loss projects
  through the LM head only at the positions whose next token is trained. TRL's fused LM head does that on
  Triton devices, but on a CPU it projects every position and masks afterwards, and the vocabulary head is
  most of a small model (Gemma 3 270M: 168M of 268M parameters, a 262k-token vocabulary): on a 600-token
  AdaptRec prompt with a 10-token answer, >98% of that work is thrown away. The loss is the same (the
  mean negative log-likelihood of the completion tokens, normalised like TRL by `num_items_in_batch`);
  TRL's per-token entropy and accuracy metrics are not computed.
- `loss="listwise"` (`listwise_trainer()`): the cross-entropy of the target among the K candidates' answer
  log-likelihoods, exactly what score mode ranks by: every gradient goes to the choice, none to copying the
  answer's format (docs/design.md, Fine-tuning objectives).
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
LOSSES = ("answer", "listwise")


def candidate_log_likelihoods(model, prompt: list[int], completions: list[list[int]]):
    """log p(completion_j | prompt) for every candidate j as a (K,) tensor with gradients: score mode's
    numbers (`HFEngine.score`), differentiable. The completions' shared opening (the answer field's header)
    joins the prompt: it adds the same constant to every score, which the listwise loss ignores, so it is
    left out. The prompt runs once; the K remainders run as one batch over its cache repeated K times."""
    import torch

    dev = next(model.parameters()).device
    shared = 0
    while shared < min(len(c) for c in completions) - 1 and len({c[shared] for c in completions}) == 1:
        shared += 1
    context, rest = prompt + completions[0][:shared], [c[shared:] for c in completions]
    from transformers import DynamicCache

    # a cache passed in: in training mode a model may not build one (activation checkpointing turns it off)
    cache = DynamicCache(config=model.config)
    out = model(input_ids=torch.tensor([context], device=dev), cache=cache, use_cache=True, logits_to_keep=1)
    if cache.get_seq_length() == 0:  # a layer dropped the cache (activation checkpointing in training mode)
        raise RuntimeError("the prompt's KV cache was not filled (activation checkpointing is on?): the candidates "
                           "would be scored without the prompt; train the listwise loss without activation checkpointing")
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
    scores = first[torch.tensor([c[0] for c in rest], device=dev)]
    width = max(len(c) for c in rest)
    if width == 1:
        return scores
    k = len(rest)
    cache.batch_repeat_interleave(k)
    fed = torch.tensor([c[:-1] + [0] * (width - len(c)) for c in rest], device=dev)
    mask = torch.tensor([[1] * len(context) + [1] * (len(c) - 1) + [0] * (width - len(c)) for c in rest], device=dev)
    positions = torch.arange(len(context), len(context) + width - 1, device=dev).expand(k, -1)
    logits = model(input_ids=fed, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True).logits
    targets = torch.tensor([c[1:] + [0] * (width - len(c)) for c in rest], device=dev)
    counted = torch.tensor([[1.0] * (len(c) - 1) + [0.0] * (width - len(c)) for c in rest], device=dev)
    logits = logits.float()
    logp = logits.gather(2, targets[..., None])[..., 0] - logits.logsumexp(dim=-1)  # no (K, W, V) log-softmax copy
    return scores + (logp * counted).sum(dim=1)


def listwise_tokenize_fn(model, tokenizer, prompt_format: str = "auto") -> Callable[[dict], dict]:
    """A function mapping a `rows.listwise_row` to token ids: the prompt as `HFEngine.prompt_ids` renders
    it (`input_ids`, no label), each candidate's answer (`candidates`) and the target's position."""
    from adaptrec_prompts.backends.hf import HFEngine

    engine = HFEngine(model, tokenizer, prompt_format=prompt_format)

    def tokenize(row: dict) -> dict:
        prompt = engine.prompt_ids(row["prompt"])
        return {"input_ids": prompt, "labels": [-100] * len(prompt),
                "candidates": [tokenizer(c, add_special_tokens=False)["input_ids"] for c in row["candidates"]],
                "target_index": row["target_index"]}

    return tokenize


def listwise_loss(model, inputs: dict):
    """Mean over the batch of -log softmax(candidate log-likelihoods)[target] (`candidate_log_likelihoods`)."""
    import torch

    losses = []
    for b, target in enumerate(inputs["target_index"]):
        length = int(inputs["attention_mask"][b].sum()) if "attention_mask" in inputs else inputs["input_ids"].size(1)
        prompt = inputs["input_ids"][b, :length].tolist()  # right-padded by the collator
        scores = candidate_log_likelihoods(model, prompt, [list(c) for c in inputs["candidates"][b]])
        losses.append(-torch.log_softmax(scores, dim=0)[int(target)])
    return torch.stack(losses).mean()


def listwise_collator(pad_token_id: int):
    """TRL's language-modelling collator for the prompts, with the candidates and targets passed through."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    base = DataCollatorForLanguageModeling(pad_token_id=pad_token_id)

    def collate(examples: list[dict]) -> dict:
        batch = base([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
        batch["candidates"] = [e["candidates"] for e in examples]
        batch["target_index"] = [int(e["target_index"]) for e in examples]
        return batch

    return collate


def listwise_trainer():
    """TRL's `SFTTrainer` whose loss is `listwise_loss` (built on first use: trl is an optional dependency).
    Its loss is a mean over rows, so the Trainer divides it by the accumulation steps (`loss_is_scaled_for_ga`)."""
    global _LISTWISE
    if _LISTWISE is None:
        from trl import SFTTrainer

        class ListwiseSFTTrainer(SFTTrainer):
            """`SFTTrainer` trained on the choice among the K candidates (module docstring); data, PEFT,
            optimisation, checkpoints and logging are TRL's."""

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.loss_is_scaled_for_ga = False

            def _set_signature_columns_if_needed(self):
                self._signature_columns = ["input_ids", "labels", "candidates", "target_index"]

            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                loss = listwise_loss(model, inputs)
                return (loss, None) if return_outputs else loss

        _LISTWISE = ListwiseSFTTrainer
    return _LISTWISE


_LISTWISE = None
