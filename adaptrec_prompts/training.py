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
    from adaptrec_prompts.modules import example_inputs

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
        "help": "numbers | letters: Stage-3 candidate labels (evaluate with the same)"})
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
    from adaptrec_prompts.modules import AdaptRec, load_program
    from adaptrec_prompts.render import manifest_template

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
    from adaptrec_prompts.sft_data import stage3_row

    out = Path(training_args.output_dir) / "base-model"
    if not (out / "config.json").is_file():
        texts = []
        for row in rows[:2000]:
            r = stage3_row(program, row)
            texts.append("\n\n".join(m["content"] for m in r["prompt"] + r["completion"]))
        build_tiny_llama(texts, out, size=script_args.tiny_model_size, vocab_size=script_args.tiny_vocab_size,
                         chat_template=True, seed=training_args.seed)
    return str(out)


class SelfAdaptiveSelection(TrainerCallback):
    """Trainer callback: every `refresh_steps` steps, the model being trained re-selects the demonstrations
    of the next `window` training rows of the stream (Stage 2 in score mode), and the changes are counted.

    It is built before the trainer and reads the live model and tokenizer from the callback kwargs.
    """

    # A plain object holding rows and selections; TrainerCallback has no __init__ to call.

    def __init__(self, program, rows: list[dict], refresh_steps: int, window: int, seed: int = 0,
                 prompt_format: str = "auto"):
        import numpy as np

        from adaptrec_prompts.sft_data import select_indices

        self.program, self.rows, self.refresh_steps, self.window = program, rows, refresh_steps, window
        self.prompt_format = prompt_format
        self.indices = {r["example_id"]: select_indices(program, r) for r in rows}
        self.order = np.random.default_rng(seed).permutation(len(rows)).tolist()
        self.cursor = 0
        self.history: list[dict] = []

    # The stream the trainer consumes: rows in a seeded order, rendered with the *current* selection.
    def stream(self, tokenize):
        from adaptrec_prompts.sft_data import stage3_row

        epoch = 0
        while True:
            for pos, i in enumerate(self.order):
                self.cursor = pos
                row = self.rows[i]
                yield tokenize(stage3_row(self.program, row, self.indices[row["example_id"]]))
            epoch += 1

    def select_with_model(self, model, tokenizer, row: dict) -> list[int]:
        """Rank the pool users by log p(answer names user i first | Stage-2 prompt); keep the top M (the
        same rule as `UserSelector` in score mode)."""
        import torch

        from adaptrec_prompts.backends.hf import HFEngine
        from adaptrec_prompts.modules import example_inputs, stage2_completions, top_m_by_score

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
        from adaptrec_prompts.evaluation import _sha, program_state

        a = self.adaptive
        return _sha({"program": program_state(a.program), "rows": [r["example_id"] for r in a.rows],
                     "order": a.order, "refresh_steps": a.refresh_steps, "window": a.window,
                     "prompt_format": a.prompt_format})

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

    from adaptrec_prompts.evaluation import package_versions, program_state
    from adaptrec_prompts.lora import architecture
    from adaptrec_prompts.evaluation import _sha as sha
    from adaptrec_prompts.prepare import load_manifest, load_prepared
    from adaptrec_prompts.sft_data import build_rows

    if script_args.device is not None:
        from adaptrec_prompts.devices import trainer_use_cpu

        use_cpu = trainer_use_cpu(script_args.device)
        if use_cpu != training_args.use_cpu:  # the arguments fix their device when built: build them again
            training_args = dataclasses.replace(training_args, use_cpu=use_cpu)
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
        from adaptrec_prompts.neighbors import pool_rows

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
    if script_args.selection == "adaptive":
        adaptive = SelfAdaptiveSelection(program, rows, script_args.selection_refresh_steps,
                                         script_args.selection_refresh_window, seed=training_args.seed,
                                         prompt_format=script_args.prompt_format)
        tokenize = tokenize_fn(model, tokenizer, script_args.prompt_format)
        train_dataset = datasets.IterableDataset.from_generator(LiveStream(adaptive, tokenize))
        training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        if training_args.max_steps <= 0:
            per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
            training_args.max_steps = max(1, int(training_args.num_train_epochs * len(rows) / per_step))
        callbacks.append(adaptive)
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
    resume = training_args.resume_from_checkpoint or (
        last_checkpoint(training_args.output_dir) if script_args.auto_resume else None)
    if resume and script_args.selection == "adaptive":
        adaptive.load(resume)
    if resume:
        print(f"resuming from {resume}", flush=True)
    trainer_cls = answer_only_trainer() if script_args.answer_only_logits else SFTTrainer
    trainer = trainer_cls(model=model, args=training_args, train_dataset=train_dataset, processing_class=tokenizer,
                          peft_config=get_peft_config(model_args), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    try:
        loss_curve(trainer.state.log_history, Path(training_args.output_dir) / "loss.png",
                   f"{Path(training_args.output_dir).name}: {script_args.selection}, {len(rows)} rows")
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
        "log_history": trainer.state.log_history,
        "versions": package_versions(),
        "config": {"script": asdict(script_args), "model": asdict(model_args),
                   "training": json.loads(training_args.to_json_string())},
    }
    path = Path(training_args.output_dir) / "adaptrec_manifest.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return out
