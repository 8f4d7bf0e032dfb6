"""Fine-tuning pieces shared by `finetune/sft.py` and `adaptrec bench sft` (needs the `finetune` extra).

- `AdaptRecSFTArguments` + `train(script_args, SFTConfig, ModelConfig)`: what `finetune/sft.py` runs (the
  script only parses arguments), with `SelfAdaptiveSelection`, the self-adaptive selection callback.
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
- `ChoiceDiagnostics`: a callback that scores a fixed slice of validation rows (and of the training rows)
  in score mode before training and every few steps: the choice NLL against ln K, HR@1, and HR@1 split by
  whether the demonstrations show the target (`baselines.demo_match.demo_exposure`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from adaptrec_prompts.backends.presets import GEMMA_PRESET
from adaptrec_prompts.errors import ConfigError


# LoRA placements compared by `adaptrec bench sft` and used by `adaptrec sft-experiment` (Llama/Gemma names).
LORA_TARGETS = {"all": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                "attention": ["q_proj", "k_proj", "v_proj", "o_proj"], "mlp": ["gate_proj", "up_proj", "down_proj"]}


def has_demonstrations(program, row: dict) -> bool:
    """Whether `program` has users to show as demonstrations for `row` (always true for zero-shot)."""
    from adaptrec_prompts.programs.adaptrec import example_inputs

    x = example_inputs(row)
    return program.selection == "none" or bool(program.demonstration_pool(x["neighbors"], x["random_users"],
                                                                           required=False))


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


def loss_curve(log_history: list[dict], path, title: str, diagnostics: list[dict] | None = None) -> None:
    """Training loss against step (from the trainer's log history) as a PNG; with `diagnostics`
    (`ChoiceDiagnostics` records), a second panel with the choice NLL of each slice against ln K."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    fig, axes = plt.subplots(1, 2 if diagnostics else 1, figsize=(11 if diagnostics else 6, 3.5), squeeze=False)
    ax = axes[0][0]
    ax.plot([p for p, _ in points], [v for _, v in points], marker="." if len(points) < 50 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=9)
    if diagnostics:
        ax = axes[0][1]
        for split in sorted({d["slice"] for d in diagnostics}):
            rows = sorted((d for d in diagnostics if d["slice"] == split), key=lambda d: d["step"])
            ax.plot([d["step"] for d in rows], [d["choice_nll"] for d in rows], marker="o",
                    label=f"{split} ({rows[-1]['n']} rows)")
        k = diagnostics[0]["k"]
        ax.axhline(math.log(k), color="grey", linestyle="--", label=f"chance, ln {k}")
        ax.set_xlabel("step")
        ax.set_ylabel("choice NLL (target among K)")
        ax.set_title("is the choice learned? (lower is better)", fontsize=9)
        ax.legend(fontsize=8)
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
    """A function mapping a `sft_data.listwise_row` to token ids: the prompt as `HFEngine.prompt_ids` renders
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


class ChoiceDiagnostics(TrainerCallback):
    """Is the choice being learned? Before training, every `every_steps` steps and at the end, score each
    slice's rows (e.g. 32 validation users, 16 training rows) in score mode with the model being trained, and
    append one record per slice to `path` (JSON Lines): the choice NLL (cross-entropy of the target among the
    K candidates' scores; chance is ln K), HR@1, where the top-1s sit in the list, and HR@1 split by whether
    the shown similar users' next items or histories hold the target (`exposure`, fixed per row by the
    static program of the same N, M and demo items, so every variant is split on the same rows).

    The demonstrations are the ones the program would show: its preset selection, or for adaptive
    selection `select(model, tokenizer, row)` (the model's own Stage-2 choice, as at inference). Each record
    has the seconds it took (they are part of the trainer's runtime). A resumed run keeps its records and
    does not repeat a (step, slice) already recorded; a file written for other rows or settings (the
    identity in `<path>.identity.json`) is refused, never overwritten.
    """

    def __init__(self, program, slices: dict[str, list[dict]], exposure: dict[str, str | None], path,
                 every_steps: int, prompt_format: str = "auto", select=None, identity: dict | None = None):
        import math

        self.program, self.slices, self.exposure = program, slices, exposure
        self.path, self.every_steps, self.prompt_format = Path(path), every_steps, prompt_format
        self.select = select
        self.ln = math.log
        wanted = {"slices": {name: [r["example_id"] for r in rows] for name, rows in slices.items()},
                  **(identity or {})}
        id_path = self.path.with_name(self.path.name + ".identity.json")
        if id_path.is_file() and json.loads(id_path.read_text()) != wanted:
            raise ConfigError(f"{self.path} holds choice diagnostics of other rows or settings ({id_path}); use another "
                              "output_dir, or delete both files to start the diagnostics over")
        if not id_path.is_file():  # a new file (or one from before identities were written: kept)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            id_path.write_text(json.dumps(wanted) + "\n")
        self.records = self.read(self.path)

    @staticmethod
    def read(path) -> list[dict]:
        """The records of a diagnostics file, one per (step, slice) (the last written), in step order."""
        path = Path(path)
        if not path.is_file():
            return []
        last = {}
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                last[(record["step"], record["slice"])] = record
        return sorted(last.values(), key=lambda r: (r["step"], r["slice"]))

    def measure(self, model, tokenizer, step: int) -> list[dict]:
        """Score every slice not yet recorded at `step` (model in eval mode, no gradients) and record it."""
        import time

        import numpy as np
        import torch

        from adaptrec_prompts.backends.hf import HFEngine
        from adaptrec_prompts.finetune.rows import listwise_row

        done = {(r["step"], r["slice"]) for r in self.records}
        todo = {name: rows for name, rows in self.slices.items() if (step, name) not in done}
        if not todo:
            return []
        engine = HFEngine(model, tokenizer, prompt_format=self.prompt_format)
        was_training = model.training
        model.eval()
        new = []
        try:
            with torch.no_grad():
                for name, rows in todo.items():
                    started = time.perf_counter()
                    nll, hits, tops, shown_hits, hidden_hits = [], [], [], [], []
                    for row in rows:
                        indices = self.select(model, tokenizer, row) if self.select is not None else None
                        item = listwise_row(self.program, row, indices)
                        scores = np.array(engine.score(item["prompt"], item["candidates"]), dtype=float)
                        logp = scores - scores.max() - np.log(np.exp(scores - scores.max()).sum())
                        top = int(np.argmax(scores))  # ties: list order, as ranking_from_scores
                        hit = top == item["target_index"]
                        nll.append(-float(logp[item["target_index"]]))
                        hits.append(hit)
                        tops.append(top + 1)
                        (shown_hits if self.exposure.get(row["example_id"]) else hidden_hits).append(hit)
                    position, count = max(((p, tops.count(p)) for p in set(tops)), key=lambda x: (x[1], -x[0]))
                    k = len(rows[0]["candidate_item_ids"])
                    new.append({"step": step, "slice": name, "n": len(rows), "k": k,
                                "choice_nll": float(np.mean(nll)), "ln_k": self.ln(k), "hr1": float(np.mean(hits)),
                                "hr1_target_shown": float(np.mean(shown_hits)) if shown_hits else None,
                                "n_target_shown": len(shown_hits),
                                "hr1_target_not_shown": float(np.mean(hidden_hits)) if hidden_hits else None,
                                "n_target_not_shown": len(hidden_hits),
                                "top1_position": position, "top1_position_share": count / len(rows),
                                "seconds": round(time.perf_counter() - started, 1)})
        finally:
            model.train(was_training)
        with open(self.path, "a") as handle:
            for record in new:
                handle.write(json.dumps(record) + "\n")
        self.records = sorted(self.records + new, key=lambda r: (r["step"], r["slice"]))
        for r in new:
            print(f"choice diagnostics step {step} {r['slice']}: NLL {r['choice_nll']:.3f} (ln K {r['ln_k']:.3f}), "
                  f"HR@1 {r['hr1']:.3f}, top-1 #{r['top1_position']} on {r['top1_position_share']:.0%} "
                  f"({r['seconds']:.0f} s)", flush=True)
        return new

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self.measure(model, processing_class, state.global_step)
        return control

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.every_steps and state.global_step % self.every_steps == 0:
            self.measure(model, processing_class, state.global_step)
        return control

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        self.measure(model, processing_class, state.global_step)
        return control


@dataclass
class AdaptRecSFTArguments:
    """AdaptRec data and program options (the rest are TRL's SFTConfig and ModelConfig)."""

    data: str = field(default="", metadata={"help": "prepared folder with Stage-1 neighbours"})
    program: str | None = field(default=None, metadata={"help": "saved program JSON (its instructions/demos)"})
    selection: str = field(default="static", metadata={"help": "static | random | none | adaptive"})
    n_retrieve: int = field(default=10, metadata={"help": "N: neighbours considered"})
    m_select: int = field(default=5, metadata={"help": "M: demonstrations shown"})
    max_train_examples: int | None = field(default=None, metadata={"help": "first N training windows"})
    rows_file: str | None = field(default=None, metadata={
        "help": "JSON list of training example ids to train on, in this order (an experiment's shared sample)"})
    prompt: str = field(default="full", metadata={
        "help": "full (DSPy ChatAdapter) | compact (instructions only as system message; evaluate with the same)"})
    demo_items: int | None = field(default=None, metadata={"help": "show each similar user's last N items only"})
    labels: str = field(default="numbers", metadata={
        "help": "numbers | letters | titles: Stage-3 candidate labels (titles: the answer is the title; evaluate "
                "with the same)"})
    loss: str = field(default="answer", metadata={
        "help": "answer: mean NLL of the answer's tokens (TRL's SFT loss) | listwise: cross-entropy of the target "
                "among the K candidates' answer log-likelihoods (what score mode ranks by)"})
    diagnostics_split: str = field(default="valid", metadata={
        "help": "split whose first diagnostics_rows rows are scored during training (never test)"})
    diagnostics_rows: int = field(default=0, metadata={
        "help": "choice diagnostics: rows of diagnostics_split scored before training, every diagnostics_steps "
                "steps and at the end (0: off)"})
    diagnostics_train_rows: int = field(default=0, metadata={
        "help": "choice diagnostics: also score the first N training rows (can the adapter fit its own rows?)"})
    diagnostics_steps: int = field(default=0, metadata={"help": "choice diagnostics: every N steps (0: start and end)"})
    train_stage2: bool = field(default=False, metadata={"help": "add Stage-2 rows (sft_data.stage2_label)"})
    selection_refresh_steps: int = field(default=50, metadata={"help": "adaptive: re-select every N steps"})
    selection_refresh_window: int = field(default=64, metadata={"help": "adaptive: upcoming rows re-selected"})
    prompt_format: str = field(default="auto", metadata={
        "help": "auto (chat template when the tokenizer has one) | chat | plain (base models, e.g. gemma-3-270m); "
                "must match how the model is prompted at evaluation"})
    answer_only_logits: bool = field(default=True, metadata={
        "help": "compute vocabulary logits only where the answer is trained (same loss as TRL's; several times "
                "cheaper on CPU, where TRL's fused head projects every position: adaptrec bench sft)"})
    checkpoint_minutes: float = field(default=0.0, metadata={
        "help": "also save a checkpoint whenever this many minutes have passed (0: only TRL's save_strategy)"})
    auto_resume: bool = field(default=True, metadata={
        "help": "continue from the newest checkpoint-N in output_dir when there is one (resume_from_checkpoint "
                "names one explicitly)"})
    tiny_model_size: str = field(default="micro", metadata={"help": "model_name_or_path=tiny: micro|small|25m"})
    tiny_vocab_size: int = field(default=4000, metadata={"help": "model_name_or_path=tiny: tokenizer size"})
    device: str | None = field(default=None, metadata={
        "help": "cpu | cuda | mps | auto, as adaptrec's --device (sets use_cpu); default: TRL's own choice (the first "
                "visible GPU unless --use_cpu). cuda:N for N > 0: select the GPU with CUDA_VISIBLE_DEVICES=N"})


def _program(script_args: AdaptRecSFTArguments, manifest: dict):
    from adaptrec_prompts.data.render import manifest_template
    from adaptrec_prompts.programs.adaptrec import AdaptRec
    from adaptrec_prompts.programs.saving import load_program

    if script_args.program:
        return load_program(script_args.program)
    return AdaptRec(manifest_template(manifest), selection=script_args.selection,
                    n_retrieve=script_args.n_retrieve, m_select=script_args.m_select, mode="score",
                    prompt=script_args.prompt, demo_items=script_args.demo_items, labels=script_args.labels)


def _base_model(script_args, model_args, training_args, program, rows) -> str:
    """The base model folder: model_name_or_path, or a tiny Llama built from the data when it is 'tiny'."""
    if model_args.model_name_or_path == GEMMA_PRESET:  # the preset's dense local copy (extra .[gemma])
        from adaptrec_prompts.backends.gemma import gemma_270m_dir

        return str(gemma_270m_dir())
    if model_args.model_name_or_path != "tiny":
        return model_args.model_name_or_path
    from adaptrec_prompts.backends.tiny import build_tiny_llama
    from adaptrec_prompts.finetune.rows import stage3_row

    out = Path(training_args.output_dir) / "base-model"
    if not (out / "config.json").is_file():
        texts = []
        for row in rows[:2000]:
            r = stage3_row(program, row)
            texts.append("\n\n".join(m["content"] for m in r["prompt"] + r["completion"]))
        build_tiny_llama(texts, out, size=script_args.tiny_model_size, vocab_size=script_args.tiny_vocab_size,
                         chat_template=True, seed=training_args.seed)
    return str(out)


def _diagnostics(script_args: AdaptRecSFTArguments, manifest: dict, program, train_rows: list[dict],
                 output_dir: Path, select=None) -> ChoiceDiagnostics:
    """The `ChoiceDiagnostics` callback of a run: the first `diagnostics_rows` rows of `diagnostics_split` and
    the first `diagnostics_train_rows` training rows, rendered by the program being trained (`select`: the
    adaptive selection, by the model being trained)."""
    from adaptrec_prompts.data.prepare import load_prepared
    from adaptrec_prompts.evaluation.baselines.demo_match import demo_exposure

    slices = {}
    if script_args.diagnostics_rows:
        split = load_prepared(script_args.data)[script_args.diagnostics_split]
        if "neighbor_example_ids" not in split.column_names or not split[0]["neighbor_example_ids"]:
            raise ConfigError(f"{script_args.data}: split {script_args.diagnostics_split!r} has no Stage-1 neighbours "
                              "for the choice diagnostics; query them with `adaptrec index neighbors --splits`")
        slices[script_args.diagnostics_split] = split.select(
            range(min(script_args.diagnostics_rows, split.num_rows))).to_list()
    if script_args.diagnostics_train_rows:
        slices["train"] = train_rows[: script_args.diagnostics_train_rows]
    exposure = {r["example_id"]: demo_exposure(r, "static", script_args.n_retrieve, script_args.m_select,
                                               script_args.demo_items)
                for rows in slices.values() for r in rows}
    every = script_args.diagnostics_steps
    identity = {"labels": script_args.labels, "loss": script_args.loss, "selection": script_args.selection,
                "prompt": script_args.prompt, "demo_items": script_args.demo_items, "m_select": script_args.m_select}
    return ChoiceDiagnostics(program, slices, exposure, output_dir / "choice_diagnostics.jsonl", every,
                             prompt_format=script_args.prompt_format, select=select, identity=identity)


class SelfAdaptiveSelection(TrainerCallback):
    """Trainer callback: every `refresh_steps` steps, the model being trained re-selects the demonstrations
    of the next `window` training rows of the stream (Stage 2 in score mode), and the changes are counted.

    It is built before the trainer and reads the live model and tokenizer from the callback kwargs.
    """

    # A plain object holding rows and selections; TrainerCallback has no __init__ to call.

    def __init__(self, program, rows: list[dict], refresh_steps: int, window: int, seed: int = 0,
                 prompt_format: str = "auto", render=None):
        import numpy as np

        from adaptrec_prompts.finetune.rows import select_indices

        self.program, self.rows, self.refresh_steps, self.window = program, rows, refresh_steps, window
        self.prompt_format = prompt_format
        self.render = render  # program, row, indices -> a training row (default: sft_data.stage3_row)
        self.indices = {r["example_id"]: select_indices(program, r) for r in rows}
        self.order = np.random.default_rng(seed).permutation(len(rows)).tolist()
        self.cursor = 0
        self.history: list[dict] = []

    # The stream the trainer consumes: rows in a seeded order, rendered with the *current* selection.
    def stream(self, tokenize):
        from adaptrec_prompts.finetune.rows import stage3_row

        render = self.render or stage3_row
        epoch = 0
        while True:
            for pos, i in enumerate(self.order):
                self.cursor = pos
                row = self.rows[i]
                yield tokenize(render(self.program, row, self.indices[row["example_id"]]))
            epoch += 1

    def select_with_model(self, model, tokenizer, row: dict) -> list[int]:
        """Rank the pool users by log p(answer names user i first | Stage-2 prompt); keep the top M (the
        same rule as `UserSelector` in score mode)."""
        import torch

        from adaptrec_prompts.backends.hf import HFEngine
        from adaptrec_prompts.programs.adaptrec import example_inputs
        from adaptrec_prompts.programs.selector import stage2_completions, top_m_by_score

        x = example_inputs(row)
        pool = self.program.demonstration_pool(x["neighbors"])
        m = min(self.program.m_select, len(pool))
        selector = self.program.selector
        messages = selector.adapter().format(selector.select.signature, selector.select.demos,
                                         selector.inputs(x["history_titles"], [h for h, _ in pool], m))
        completions = stage2_completions(len(pool), m)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                scores = HFEngine(model, tokenizer, prompt_format=self.prompt_format).score(messages, completions)
        finally:
            model.train(was_training)
        return top_m_by_score(scores, m)

    STATE_FILE = "adaptrec_selection.json"

    def on_save(self, args, state, control, **kwargs):
        """Save the current selections and history beside the checkpoint, so a resumed run continues them."""
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            (folder / self.STATE_FILE).write_text(json.dumps({"indices": self.indices, "history": self.history}))
        return control

    def load(self, checkpoint: str) -> bool:
        """Restore the selections saved with `checkpoint` (False when it has none)."""
        path = Path(checkpoint) / self.STATE_FILE
        if not path.is_file():
            return False
        saved = json.loads(path.read_text())
        self.indices.update(saved["indices"])
        self.history = saved["history"]
        return True

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not self.refresh_steps or state.global_step % self.refresh_steps:
            return control
        upcoming = [self.order[(self.cursor + 1 + k) % len(self.order)] for k in range(self.window)]
        changed = 0
        for i in upcoming:
            row = self.rows[i]
            new = self.select_with_model(model, processing_class, row)
            changed += new != sorted(self.indices[row["example_id"]])
            self.indices[row["example_id"]] = new
        self.history.append({"step": state.global_step, "reselected": len(upcoming), "changed": changed})
        return control


class LiveStream:
    """The adaptive training stream as a generator function for `datasets.IterableDataset.from_generator`.

    datasets fingerprints a generator by pickling it; the program it renders with need not pickle (a
    signature built at run time, e.g. lettered labels or compiled instructions, does not), and the stream is
    only ever read in this process. So it pickles as its fingerprint: the program, the rows, the order and
    the refresh settings (the tokenizer is left out: a streaming dataset writes no cache, so the hash only
    names the builder's config); unpickling it elsewhere is an error, not a copy of stale selections. An
    in-process copy (`copy.copy`, `copy.deepcopy`, as `interleave_datasets` does) is the same stream."""

    def __init__(self, adaptive: SelfAdaptiveSelection, tokenize):
        self.adaptive, self.tokenize = adaptive, tokenize

    def __call__(self):
        yield from self.adaptive.stream(self.tokenize)

    def fingerprint(self) -> str:
        from adaptrec_prompts.evaluation.harness import _sha, program_state

        a = self.adaptive
        return _sha({"program": program_state(a.program), "rows": [r["example_id"] for r in a.rows],
                     "order": a.order, "refresh_steps": a.refresh_steps, "window": a.window,
                     "prompt_format": a.prompt_format,
                     **({"render": a.render.__name__} if a.render is not None else {})})

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        return _live_stream_elsewhere, (self.fingerprint(),)


def _live_stream_elsewhere(fingerprint: str):
    raise RuntimeError(f"the adaptive training stream {fingerprint[:12]} was sent to another process; it reads "
                       "selections that only the training process updates (use dataloader_num_workers=0)")


def split_rows_with_demonstrations(program, rows: list[dict]) -> tuple[list[dict], int]:
    """(rows whose demonstration pool is not empty, how many were left out); every row for zero-shot."""
    kept = [r for r in rows if has_demonstrations(program, r)]
    return kept, len(rows) - len(kept)


def train(script_args: AdaptRecSFTArguments, training_args, model_args) -> dict:
    """Fine-tune one LoRA adapter as `finetune/sft.py` does (TRL `SFTConfig` and `ModelConfig` for the rest);
    returns the manifest written to `output_dir/adaptrec_manifest.json`.

    `script_args.device` (when set) decides `training_args.use_cpu` (`devices.trainer_use_cpu`): a GPU torch
    cannot see is an error before any data is read, rather than a silent run on the CPU."""
    import dataclasses

    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer, get_peft_config

    from adaptrec_prompts.backends.lora import architecture
    from adaptrec_prompts.data.prepare import load_manifest, load_prepared
    from adaptrec_prompts.evaluation.harness import package_versions, program_state
    from adaptrec_prompts.evaluation.harness import _sha as sha
    from adaptrec_prompts.finetune.rows import build_rows

    if script_args.device is not None:
        from adaptrec_prompts.utils.devices import trainer_use_cpu

        use_cpu = trainer_use_cpu(script_args.device)
        if use_cpu != training_args.use_cpu:  # the arguments fix their device when built: build them again
            training_args = dataclasses.replace(training_args, use_cpu=use_cpu)
    if script_args.loss not in LOSSES:
        raise ConfigError(f"loss={script_args.loss!r} is not one of {LOSSES}")
    if script_args.diagnostics_split != "valid":
        raise ConfigError(f"diagnostics_split={script_args.diagnostics_split!r}: training choices are made on "
                          "validation rows only (never test rows; the adapter's own rows are diagnostics_train_rows); "
                          "use valid")
    for name in ("diagnostics_rows", "diagnostics_train_rows", "diagnostics_steps"):
        if getattr(script_args, name) < 0:
            raise ConfigError(f"{name}={getattr(script_args, name)}: must be >= 0 (0: off)")
    if script_args.selection == "adaptive" and training_args.dataloader_num_workers:
        # a worker process would render rows with its own copy of the selections, never the refreshed ones
        raise ConfigError(f"dataloader_num_workers={training_args.dataloader_num_workers}: adaptive selection "
                          "re-selects in the training process, which worker processes would not see; use 0")
    manifest = load_manifest(script_args.data)
    train = load_prepared(script_args.data)["train"]
    if "neighbor_example_ids" not in train.column_names and script_args.selection != "none":
        raise ConfigError(f"{script_args.data} has no neighbours; run `adaptrec index neighbors` first")
    sample = manifest.get("neighbors", {}).get("splits", {}).get("train", {}).get("sample")
    if sample and script_args.selection != "none":  # neighbours were queried for a sample of train: use it
        from adaptrec_prompts.retrieval.index import pool_rows

        train = train.select(pool_rows(train.num_rows, sample["rows"], sample["seed"]))
    if script_args.rows_file:
        wanted = json.loads(Path(script_args.rows_file).read_text())
        position = {e: k for k, e in enumerate(train["example_id"])}
        missing = [e for e in wanted if e not in position]
        if missing:
            raise ConfigError(f"{script_args.rows_file}: {len(missing)} example ids are not training rows of "
                              f"{script_args.data} (first: {missing[0]})")
        train = train.select([position[e] for e in wanted])
    if script_args.max_train_examples:
        train = train.select(range(min(script_args.max_train_examples, train.num_rows)))
    rows = train.to_list()
    program = _program(script_args, manifest)
    rows, without = split_rows_with_demonstrations(program, rows)
    if without:  # e.g. the earliest windows: no other user has anything before them
        print(f"{without} training rows have no allowed similar user; they are left out (a prompt without "
              "demonstrations would silently train the zero-shot task)", flush=True)
    base = _base_model(script_args, model_args, training_args, program, rows)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    callbacks = []
    listwise = script_args.loss == "listwise"
    if listwise:  # the rows carry candidates: keep the columns and collate them (`listwise_collator`)
        if script_args.train_stage2:
            raise ConfigError("loss='listwise' trains the Stage-3 choice; train_stage2 rows have no candidates")
        training_args.remove_unused_columns = False
        # TRL's default turns activation checkpointing on, and with it a decoder layer drops the KV cache in
        # training: the K answers would be scored without the prompt. transformers 5 reads
        # `activation_checkpointing` (`gradient_checkpointing` is its old alias, copied at construction).
        if training_args.gradient_checkpointing or getattr(training_args, "activation_checkpointing", False):
            print("loss='listwise' scores the K candidates over the prompt's KV cache, which activation checkpointing "
                  "turns off: training without it", flush=True)
            training_args.gradient_checkpointing = False
            if hasattr(training_args, "activation_checkpointing"):
                training_args.activation_checkpointing = False
        training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    if script_args.selection == "adaptive":
        from adaptrec_prompts.finetune.rows import listwise_row

        adaptive = SelfAdaptiveSelection(program, rows, script_args.selection_refresh_steps,
                                         script_args.selection_refresh_window, seed=training_args.seed,
                                         prompt_format=script_args.prompt_format,
                                         render=listwise_row if listwise else None)
        tokenize = (listwise_tokenize_fn if listwise else tokenize_fn)(model, tokenizer, script_args.prompt_format)
        train_dataset = datasets.IterableDataset.from_generator(LiveStream(adaptive, tokenize))
        training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        if training_args.max_steps <= 0:
            per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
            training_args.max_steps = max(1, int(training_args.num_train_epochs * len(rows) / per_step))
        callbacks.append(adaptive)
    elif listwise:
        from adaptrec_prompts.finetune.rows import listwise_row

        tokenize = listwise_tokenize_fn(model, tokenizer, script_args.prompt_format)
        train_dataset = datasets.Dataset.from_list([tokenize(listwise_row(program, r)) for r in rows])
    elif script_args.prompt_format == "plain":  # TRL would apply a chat template: tokenize as inference does
        tokenize = tokenize_fn(model, tokenizer, "plain")
        train_dataset = datasets.Dataset.from_list(
            [tokenize(r) for r in build_rows(program, rows, train_stage2=script_args.train_stage2)])
        training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    else:
        train_dataset = datasets.Dataset.from_list(
            [{"prompt": r["prompt"], "completion": r["completion"]}
             for r in build_rows(program, rows, train_stage2=script_args.train_stage2)])
    if script_args.checkpoint_minutes > 0:
        callbacks.append(timed_checkpoints(script_args.checkpoint_minutes))
    diagnostics = None
    if script_args.diagnostics_rows or script_args.diagnostics_train_rows:
        select = None
        if script_args.selection == "adaptive":  # the model's own Stage-2 choice, as inference makes it
            select = adaptive.select_with_model
        diagnostics = _diagnostics(script_args, manifest, program, rows, Path(training_args.output_dir), select)
        callbacks.append(diagnostics)
    resume = training_args.resume_from_checkpoint or (
        last_checkpoint(training_args.output_dir) if script_args.auto_resume else None)
    settings = {"loss": script_args.loss, "labels": script_args.labels, "prompt": script_args.prompt,
                "demo_items": script_args.demo_items, "selection": script_args.selection,
                "m_select": script_args.m_select, "n_retrieve": script_args.n_retrieve}
    settings_path = Path(training_args.output_dir) / "adaptrec_train_settings.json"
    if resume and settings_path.is_file() and json.loads(settings_path.read_text()) != settings:
        raise ConfigError(f"{resume} was trained with {json.loads(settings_path.read_text())} ({settings_path}); this "
                          f"run asks for {settings}: a checkpoint continues only the run it belongs to; use another "
                          "output_dir, or --auto_resume false to start over")
    Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
    settings_path.write_text(json.dumps(settings) + "\n")
    if resume and script_args.selection == "adaptive":
        adaptive.load(resume)
    if resume:
        print(f"resuming from {resume}", flush=True)
    if listwise:
        trainer_cls, extra = listwise_trainer(), {"data_collator": listwise_collator(tokenizer.pad_token_id)}
    else:
        trainer_cls, extra = (answer_only_trainer() if script_args.answer_only_logits else SFTTrainer), {}
    trainer = trainer_cls(model=model, args=training_args, train_dataset=train_dataset, processing_class=tokenizer,
                          peft_config=get_peft_config(model_args), callbacks=callbacks, **extra)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    try:
        loss_curve(trainer.state.log_history, Path(training_args.output_dir) / "loss.png",
                   f"{Path(training_args.output_dir).name}: {script_args.selection}, {len(rows)} rows, "
                   f"{script_args.loss} loss", diagnostics.records if diagnostics else None)
    except ImportError:  # matplotlib is the plots extra; the log history is in the manifest either way
        print("loss.png not written: pip install -e '.[plots]'", flush=True)
    out = {
        "base_model": base,
        "base_model_architecture": architecture(base),  # checked when the adapter is loaded (lora.check_adapter)
        "data": script_args.data,
        "data_hash": manifest.get("data_hash"),
        "data_manifest_hash": sha(manifest),
        "program_hash": sha(program_state(program)),
        "program": program_state(program)["config"],
        "train_rows": len(rows),
        "train_rows_sha256": sha([r["example_id"] for r in rows]),
        "train_rows_without_demonstrations_left_out": without,
        "resumed_from": resume,
        "steps": trainer.state.global_step,
        "train_seconds_this_invocation": next((e["train_runtime"] for e in reversed(trainer.state.log_history)
                                               if "train_runtime" in e), None),
        "loss_curve": "loss.png",
        "selection_history": adaptive.history if script_args.selection == "adaptive" else None,
        "choice_diagnostics": diagnostics.records if diagnostics else None,
        "log_history": trainer.state.log_history,
        "versions": package_versions(),
        "config": {"script": asdict(script_args), "model": asdict(model_args),
                   "training": json.loads(training_args.to_json_string())},
    }
    path = Path(training_args.output_dir) / "adaptrec_manifest.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return out
