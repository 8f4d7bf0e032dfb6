"""Fine-tuning AdaptRec with TRL: what `finetune/sft.py` runs (the script only parses arguments) and
`adaptrec sft-experiment` calls per variant; `adaptrec bench sft` times its pieces (needs the `finetune` extra).

`AdaptRecSFTArguments` + `train(script_args, SFTConfig, ModelConfig)`: the rows (`rows`), rendered by the
program's own adapter, a LoRA through TRL's `SFTTrainer` with one of the objectives of `losses` and the
callbacks of `callbacks` (self-adaptive selection, choice diagnostics, timed checkpoints), and the adapter's
manifest (the prompt it was trained with, which evaluation reads back: `backends.lora`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from adaptrec_prompts.backends.presets import GEMMA_PRESET
from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.finetune.callbacks import ChoiceDiagnostics, LiveStream, SelfAdaptiveSelection, timed_checkpoints
from adaptrec_prompts.finetune.losses import (LOSSES, answer_only_trainer, listwise_collator, listwise_tokenize_fn,
                                              listwise_trainer, tokenize_fn)


# LoRA placements compared by `adaptrec bench sft` and used by `adaptrec sft-experiment` (Llama/Gemma names).
LORA_TARGETS = {"all": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                "attention": ["q_proj", "k_proj", "v_proj", "o_proj"], "mlp": ["gate_proj", "up_proj", "down_proj"]}


def has_demonstrations(program, row: dict) -> bool:
    """Whether `program` has users to show as demonstrations for `row` (always true for zero-shot)."""
    from adaptrec_prompts.programs.adaptrec import example_inputs

    x = example_inputs(row)
    return program.selection == "none" or bool(program.demonstration_pool(x["neighbors"], x["random_users"],
                                                                           required=False))


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
    train_stage2: bool = field(default=False, metadata={"help": "add Stage-2 rows (rows.stage2_label)"})
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
