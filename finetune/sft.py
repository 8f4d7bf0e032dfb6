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

Rows are TRL conversational prompt-completion rows from `adaptrec_prompts.sft_data` (loss on the
completion only). `--selection adaptive` makes the selection self-adaptive: the model being trained
re-selects the demonstrations of upcoming examples every `--selection_refresh_steps` steps (score mode:
each pool user is ranked by the log-likelihood of being named first in the Stage-2 answer), and the
callback records how often the selection changed. `--selection static` (embedding top-M) is the default.
YAML keys unknown to the dataclasses are fatal (TrlParser's strict default).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import TrainerCallback


@dataclass
class AdaptRecSFTArguments:
    """AdaptRec data and program options (the rest are TRL's SFTConfig and ModelConfig)."""

    data: str = field(default="", metadata={"help": "prepared folder with Stage-1 neighbours"})
    program: str | None = field(default=None, metadata={"help": "saved program JSON (its instructions/demos)"})
    selection: str = field(default="static", metadata={"help": "static | random | none | adaptive"})
    n_retrieve: int = field(default=10, metadata={"help": "N: neighbours considered"})
    m_select: int = field(default=5, metadata={"help": "M: demonstrations shown"})
    max_train_examples: int | None = field(default=None, metadata={"help": "first N training windows"})
    prompt: str = field(default="full", metadata={
        "help": "full (DSPy ChatAdapter) | compact (instructions only as system message; evaluate with the same)"})
    demo_items: int | None = field(default=None, metadata={"help": "show each similar user's last N items only"})
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


def make_parser():
    from trl import ModelConfig, SFTConfig, TrlParser

    return TrlParser((AdaptRecSFTArguments, SFTConfig, ModelConfig))


def _program(script_args: AdaptRecSFTArguments, manifest: dict):
    from adaptrec_prompts.modules import AdaptRec, load_program
    from adaptrec_prompts.render import manifest_template

    if script_args.program:
        return load_program(script_args.program)
    return AdaptRec(manifest_template(manifest), selection=script_args.selection,
                    n_retrieve=script_args.n_retrieve, m_select=script_args.m_select, mode="score",
                    prompt=script_args.prompt, demo_items=script_args.demo_items)


def _base_model(script_args, model_args, training_args, program, rows) -> str:
    """The base model folder: model_name_or_path, or a tiny Llama built from the data when it is 'tiny'."""
    if model_args.model_name_or_path == "gemma-3-270m":  # the preset's dense local copy (extra .[gemma])
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


def split_rows_with_demonstrations(program, rows: list[dict]) -> tuple[list[dict], int]:
    """(rows whose demonstration pool is not empty, how many were left out); every row for zero-shot."""
    from adaptrec_prompts.modules import example_inputs

    if program.selection == "none":
        return rows, 0
    kept = [r for r in rows if program.demonstration_pool(**{k: v for k, v in example_inputs(r).items()
                                                              if k in ("neighbors", "random_users")},
                                                           required=False)]
    return kept, len(rows) - len(kept)


def _tokenizer_fn(model, tokenizer, prompt_format: str = "auto"):
    """The package's `training.tokenize_fn` (kept under this name for callers of the script)."""
    from adaptrec_prompts.training import tokenize_fn

    return tokenize_fn(model, tokenizer, prompt_format)


def main(script_args: AdaptRecSFTArguments, training_args, model_args) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer, get_peft_config

    from adaptrec_prompts.evaluation import package_versions, program_state
    from adaptrec_prompts.evaluation import _sha as sha
    from adaptrec_prompts.prepare import load_manifest, load_prepared
    from adaptrec_prompts.sft_data import build_rows

    manifest = load_manifest(script_args.data)
    train = load_prepared(script_args.data)["train"]
    if "neighbor_example_ids" not in train.column_names and script_args.selection != "none":
        raise SystemExit(f"error: {script_args.data} has no neighbours; run `adaptrec index neighbors` first")
    sample = manifest.get("neighbors", {}).get("splits", {}).get("train", {}).get("sample")
    if sample and script_args.selection != "none":  # neighbours were queried for a sample of train: use it
        from adaptrec_prompts.neighbors import pool_rows

        train = train.select(pool_rows(train.num_rows, sample["rows"], sample["seed"]))
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
        tokenize = _tokenizer_fn(model, tokenizer, script_args.prompt_format)
        train_dataset = datasets.IterableDataset.from_generator(lambda: adaptive.stream(tokenize))
        training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        if training_args.max_steps <= 0:
            per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
            training_args.max_steps = max(1, int(training_args.num_train_epochs * len(rows) / per_step))
        callbacks.append(adaptive)
    elif script_args.prompt_format == "plain":  # TRL would apply a chat template: tokenize as inference does
        tokenize = _tokenizer_fn(model, tokenizer, "plain")
        train_dataset = datasets.Dataset.from_list(
            [tokenize(r) for r in build_rows(program, rows, train_stage2=script_args.train_stage2)])
        training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    else:
        train_dataset = datasets.Dataset.from_list(
            [{"prompt": r["prompt"], "completion": r["completion"]}
             for r in build_rows(program, rows, train_stage2=script_args.train_stage2)])
    from adaptrec_prompts.training import answer_only_trainer, last_checkpoint, loss_curve, timed_checkpoints

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


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
