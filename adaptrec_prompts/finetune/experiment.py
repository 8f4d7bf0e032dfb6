"""`adaptrec sft-experiment`: the paper's main setting, fine-tuned AdaptRec vs a fine-tuned zero-shot model.

On one seeded sample of training windows (the same rows, order and steps for every variant), LoRA adapters
are trained with `trainer.train` for each variant: `none` (zero-shot prompts, LLaRA's text-only setting),
`static` (AdaptRec, the embedding top M users) and `adaptive` (the self-adaptive selection callback). Each
adapter, the untuned model and the classical baselines are then evaluated on the same frozen examples in
score mode, and a report gives every run with CIs, where its top-1s sit in the candidate list, and the
paired claims (static vs none, adaptive vs static, each vs Popularity and UserKNN).

The sample has every row's demonstration pool non-empty and the target's list position balanced over
the K positions (the same number of rows per position, as far as the data allows), so a model cannot
lower its loss by preferring one position. Every step resumes: training from its newest checkpoint,
evaluation from its run folder; the sample is written once and reused.

    from adaptrec_prompts.finetune.experiment import SFTExperiment, run
    run(SFTExperiment(data="artifacts/ml-100k-nb", out="runs/sft/ml-100k", model="gemma-3-270m",
                      train_rows=1000))
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from adaptrec_prompts.backends.presets import GEMMA_PRESET
from adaptrec_prompts.errors import ConfigError

VARIANTS = ("none", "static", "adaptive")
BASELINES = ("random", "popularity", "userknn", "sasrec", "demo-match")
# SASRec with its epochs chosen by validation HR@1 (early stopping; on split="valid" itself, the fixed 5 epochs);
# demo-match with the experiment's M and demo items (the floor of a model that reads the static prompt)
BASELINE_SPECS = {"sasrec": "baseline:sasrec:early-stop"}
LOSSES = ("answer", "listwise")


@dataclass
class SFTExperiment:
    """One dataset's fine-tuning experiment (see the module docstring).

    Attributes:
        data: a neighbour folder (`adaptrec index neighbors`) with train neighbours for the sampled rows and
            neighbours for `split`.
        out: the experiment folder (sample, adapters, run folders, report).
        model: "gemma-3-270m", "tiny" (a small Llama built once from the sample's prompts) or a model folder.
        variants: which of none / static / adaptive to train.
        train_rows: size of the shared training sample; sample_seed: its seed.
        epochs: passes over the sample (steps = epochs * train_rows / (batch_size * grad_accum)).
        prompt, demo_items, labels: the prompt style shared by training and evaluation (`AdaptRec`); labels
            "titles" answers with the title alone (LLaRA's format).
        loss: "answer" (TRL's SFT loss on the answer's tokens) or "listwise" (the cross-entropy of the target
            among the K candidates' answer scores, what score mode ranks by; `losses.listwise_loss`).
        diagnostics_rows, diagnostics_train_rows, diagnostics_steps: the choice diagnostics recorded while each
            variant trains (`callbacks.ChoiceDiagnostics`): the first `diagnostics_rows` validation rows and the
            first `diagnostics_train_rows` training rows, scored before training, every `diagnostics_steps`
            steps and at the end; the report plots them and tabulates them (0: off).
        split, limit: the evaluation rows (the first `limit` of the split).
        gradient_checkpointing: TRL turns it on by default; off, a CPU step skips the recomputed forward pass
            (memory is not the limit for a 270M model on one example).
        train_only: train the variants and stop (to train variants in parallel processes, then evaluate in one).
        device: where training and evaluation run: cpu, cuda (the first visible GPU), mps or auto
            (`devices`); cuda:N for N > 0 is refused for training (transformers' Trainer uses the first
            visible GPU: select one with CUDA_VISIBLE_DEVICES). Recorded in each evaluation's manifest
            when not "cpu", as `adaptrec eval --device` does.
    """

    data: str
    out: str
    model: str = "gemma-3-270m"
    variants: tuple[str, ...] = VARIANTS
    train_rows: int = 1000
    sample_seed: int = 0
    epochs: float = 1.0
    batch_size: int = 1
    grad_accum: int = 8
    learning_rate: float = 2e-4
    lora_r: int = 16
    lora_targets: str = "all"
    prompt: str = "compact"
    demo_items: int | None = 5
    labels: str = "numbers"
    loss: str = "answer"
    diagnostics_rows: int = 0
    diagnostics_train_rows: int = 0
    diagnostics_steps: int = 0
    n: int = 10
    m: int = 5
    refresh_steps: int = 10
    refresh_window: int = 64
    split: str = "test"
    limit: int | None = None
    mode: str = "score"
    checkpoint_minutes: float = 5.0
    seed: int = 0
    report: str | None = None
    title: str | None = None
    device: str = "cpu"
    gradient_checkpointing: bool = False
    train_only: bool = False

    def __post_init__(self) -> None:
        from adaptrec_prompts.utils.devices import DEVICES, device_problem

        if device_problem(self.device):
            raise ConfigError(f"SFTExperiment.device={self.device!r} is not valid; use {DEVICES}")
        unknown = set(self.variants) - set(VARIANTS)
        if unknown or not self.variants:
            raise ConfigError(f"variants must be a non-empty subset of {VARIANTS}, got {list(self.variants)}")
        if self.train_rows < 1:
            raise ConfigError(f"train_rows must be >= 1, got {self.train_rows}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("diagnostics_rows", "diagnostics_train_rows", "diagnostics_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0: off), got {getattr(self, name)}")


def balanced_sample(rows: list[dict], size: int, seed: int) -> list[str]:
    """Example ids of `size` rows, in a seeded order, with the target's candidate-list position spread as
    evenly as the rows allow over the K positions (round robin over positions, seeded within each)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    by_position: dict[int, list[str]] = {}
    for row in rows:
        by_position.setdefault(row["candidate_item_ids"].index(row["target_item_id"]), []).append(row["example_id"])
    queues = {p: [ids[i] for i in rng.permutation(len(ids))] for p, ids in sorted(by_position.items())}
    picked: list[str] = []
    while len(picked) < size and any(queues.values()):
        for position in sorted(queues):
            if queues[position] and len(picked) < size:
                picked.append(queues[position].pop())
    return [picked[i] for i in rng.permutation(len(picked))]


def _sample(config: SFTExperiment, out: Path) -> list[str]:
    from adaptrec_prompts.data.prepare import load_manifest, load_prepared
    from adaptrec_prompts.data.render import manifest_template
    from adaptrec_prompts.finetune.trainer import has_demonstrations
    from adaptrec_prompts.programs.adaptrec import AdaptRec

    path = out / "sample.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if (saved["train_rows"], saved["seed"]) != (config.train_rows, config.sample_seed):
            raise ConfigError(f"{path} holds a sample of {saved['train_rows']} rows (seed {saved['seed']}); this "
                              f"experiment asks for {config.train_rows} (seed {config.sample_seed}): use another --out")
        return saved["example_ids"]
    template = manifest_template(load_manifest(config.data))
    program = AdaptRec(template, selection="static", n_retrieve=config.n, m_select=config.m)
    train = load_prepared(config.data)["train"]
    rows = [r for r in train if has_demonstrations(program, r)]
    if len(rows) < config.train_rows:
        raise ConfigError(f"{config.data}: only {len(rows)} training rows have neighbours, fewer than train_rows="
                          f"{config.train_rows}; query more with `adaptrec index neighbors --splits train "
                          "--train-sample N`")
    ids = balanced_sample(rows, config.train_rows, config.sample_seed)
    positions = {}
    target_position = {r["example_id"]: r["candidate_item_ids"].index(r["target_item_id"]) + 1 for r in rows}
    for e in ids:
        positions[target_position[e]] = positions.get(target_position[e], 0) + 1
    path.write_text(json.dumps({"train_rows": config.train_rows, "seed": config.sample_seed, "example_ids": ids,
                                "target_positions": dict(sorted(positions.items()))}, indent=1) + "\n")
    return ids


def _base_model(config: SFTExperiment, out: Path, sample: list[str], progress: bool = True) -> tuple[str, str]:
    """(base model folder, prompt format) shared by every variant."""
    if config.model == GEMMA_PRESET:
        from adaptrec_prompts.backends.gemma import gemma_270m_dir

        return str(gemma_270m_dir()), "plain"
    if config.model != "tiny":
        return config.model, "auto"
    folder = out / "base-model"
    if not (folder / "config.json").is_file():
        from adaptrec_prompts.backends.tiny import build_tiny_llama
        from adaptrec_prompts.data.prepare import load_manifest, load_prepared
        from adaptrec_prompts.data.render import manifest_template
        from adaptrec_prompts.finetune.rows import stage3_row
        from adaptrec_prompts.programs.adaptrec import AdaptRec

        program = AdaptRec(manifest_template(load_manifest(config.data)), selection="static",
                           n_retrieve=config.n, m_select=config.m, prompt=config.prompt, demo_items=config.demo_items,
                           labels=config.labels)
        train = load_prepared(config.data)["train"]
        position = {e: k for k, e in enumerate(train["example_id"])}
        texts = ["\n\n".join(m["content"] for m in r["prompt"] + r["completion"])
                 for r in (stage3_row(program, train[position[e]]) for e in sample)]
        build_tiny_llama(texts, folder, size="micro", vocab_size=1000, chat_template=True, seed=config.seed,
                         progress=progress)
    return str(folder), "auto"


def _train(config: SFTExperiment, variant: str, base: str, prompt_format: str, rows_file: Path, out: Path,
           progress: bool = True) -> dict:
    from trl import ModelConfig, SFTConfig

    from adaptrec_prompts.finetune.trainer import LORA_TARGETS, AdaptRecSFTArguments, train
    from adaptrec_prompts.utils.devices import trainer_use_cpu
    from adaptrec_prompts.utils.progress import enabled as progress_enabled

    steps = max(1, round(config.epochs * config.train_rows / (config.batch_size * config.grad_accum)))
    folder = out / "train" / variant
    manifest_path = folder / "adaptrec_manifest.json"
    if manifest_path.is_file():
        done = json.loads(manifest_path.read_text())
        program = done.get("program", {})  # AdaptRec.config() leaves out labels at its default
        trained = {"prompt": program.get("prompt") or "full", "demo_items": program.get("demo_items"),
                   "labels": program.get("labels") or "numbers",
                   "loss": done.get("config", {}).get("script", {}).get("loss") or "answer"}
        wanted = {"prompt": config.prompt, "demo_items": config.demo_items, "labels": config.labels, "loss": config.loss}
        if trained != wanted:  # an adapter answers in the prompt style it was trained on
            raise ConfigError(f"{folder} holds a `{variant}` adapter trained with {trained}; this experiment asks "
                              f"for {wanted}: use another --out")
        if done.get("steps") == steps:
            return done
    script = AdaptRecSFTArguments(data=config.data, selection=variant, n_retrieve=config.n, m_select=config.m,
                                  rows_file=str(rows_file), prompt=config.prompt, demo_items=config.demo_items,
                                  labels=config.labels, loss=config.loss, diagnostics_rows=config.diagnostics_rows,
                                  diagnostics_train_rows=config.diagnostics_train_rows,
                                  diagnostics_steps=config.diagnostics_steps,
                                  prompt_format=prompt_format, selection_refresh_steps=config.refresh_steps,
                                  selection_refresh_window=config.refresh_window,
                                  checkpoint_minutes=config.checkpoint_minutes)
    training = SFTConfig(output_dir=str(folder), per_device_train_batch_size=config.batch_size,
                         gradient_accumulation_steps=config.grad_accum, learning_rate=config.learning_rate,
                         lr_scheduler_type="cosine", warmup_steps=0.05, max_steps=steps, logging_steps=1,
                         save_strategy="steps", save_steps=max(1, steps // 10), save_total_limit=2,
                         report_to="none", seed=config.seed, bf16=False, max_length=None,
                         disable_tqdm=not progress_enabled(progress),  # the Trainer's bar: steps, rate, time left
                         use_cpu=trainer_use_cpu(config.device),
                         gradient_checkpointing=config.gradient_checkpointing)
    model = ModelConfig(model_name_or_path=base, use_peft=True, lora_r=config.lora_r, lora_alpha=2 * config.lora_r,
                        lora_dropout=0.05, lora_target_modules=LORA_TARGETS[config.lora_targets], dtype="float32")
    started = time.perf_counter()
    result = train(script, training, model)
    print(f"trained {variant}: {result['steps']} steps in {time.perf_counter() - started:.0f} s -> {folder}",
          flush=True)
    return result


def run(config: SFTExperiment, command: str = "", *, config_file: str | Path | None = None,
        progress: bool = True) -> Path:
    """Run (or resume) the experiment; returns the report folder.

    Args:
        config: the experiment.
        command: how it was started, quoted in the report.
        config_file: the file the settings were read from (`--config`), recorded in experiment.json.
        progress: the Trainer's bar while each variant trains, and a bar per evaluation run (named after
            the run: examples, rate, time left); `--no-progress`, and `progress.enabled` has the rule.
    """
    from adaptrec_prompts.backends.gemma import gemma_lm
    from adaptrec_prompts.backends.hf import hf_lm
    from adaptrec_prompts.data.prepare import load_manifest, load_prepared
    from adaptrec_prompts.data.render import manifest_template
    from adaptrec_prompts.evaluation.harness import evaluate
    from adaptrec_prompts.evaluation.runs import build_program
    from adaptrec_prompts.programs.adaptrec import AdaptRec
    from adaptrec_prompts.utils.devices import trainer_use_cpu

    trainer_use_cpu(config.device)  # a GPU torch cannot see, or one the Trainer would not use: fail first
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.json").write_text(json.dumps(
        {"config": asdict(config), "command": command,
         "config_file": os.fspath(config_file) if config_file is not None else None}, indent=1) + "\n")
    sample = _sample(config, out)
    rows_file = out / "sample_ids.json"
    rows_file.write_text(json.dumps(sample))
    base, prompt_format = _base_model(config, out, sample, progress)
    trained = {v: _train(config, v, base, prompt_format, rows_file, out, progress) for v in config.variants}
    if config.train_only:
        return out
    manifest = load_manifest(config.data)
    ddict = load_prepared(config.data)
    split = ddict[config.split]
    rows = split.select(range(min(config.limit or split.num_rows, split.num_rows))).to_list()
    template = manifest_template(manifest)
    base_config = {"data": str(config.data), "data_hash": manifest.get("data_hash"), "split": config.split,
                   "limit": config.limit, "examples": len(rows)}
    runs: list[str] = []
    for name in BASELINES:  # built as `adaptrec eval --program SPEC` builds them (SASRec trains here)
        # early-stopped SASRec picks its epochs on valid: evaluated on valid, it falls back to the fixed epochs
        spec = BASELINE_SPECS.get(name, f"baseline:{name}") if config.split != "valid" else f"baseline:{name}"
        baseline = build_program(spec, config.data, n=config.n, m=config.m, demo_items=config.demo_items,
                                 seed=config.seed)
        evaluate(baseline, rows, out / "runs" / name, {**base_config, "program": spec},
                 progress=progress, data_manifest=manifest)
        runs.append(name)
    lms = {"untuned": None, **{v: str(out / "train" / v) for v in trained}}
    for label, adapter in lms.items():
        if config.model == GEMMA_PRESET:
            lm = gemma_lm(adapter=adapter, device=config.device, progress=progress)
        else:
            lm = hf_lm(base, adapter=adapter, prompt_format=prompt_format, device=config.device, progress=progress)
        for variant in (("none", "static") if adapter is None else (label,)):
            program = AdaptRec(template, selection=variant, n_retrieve=config.n, m_select=config.m, mode=config.mode,
                               prompt=config.prompt, demo_items=config.demo_items, labels=config.labels)
            name = f"{'untuned' if adapter is None else 'tuned'}-{'zero-shot' if variant == 'none' else variant}"
            evaluate(program, rows, out / "runs" / name,
                     {**base_config, "program": variant, "lm": config.model, "adapter": adapter,
                      **({"device": config.device} if config.device != "cpu" else {})},
                     lm=lm, progress=progress, data_manifest=manifest)
            runs.append(name)
    return write_report(config, out, runs, command)


def write_report(config: SFTExperiment, out: Path, runs: list[str], command: str) -> Path:
    """table.md (every run, CIs, top-1 positions), the paired claims, loss curves, claims.json / runs.json."""
    from adaptrec_prompts.evaluation.report import (bars, claims, claims_data, exposure_text, load_run, runs_data, table,
                                         write_json)

    report = Path(config.report) if config.report else out / "report"
    report.mkdir(parents=True, exist_ok=True)
    loaded = [load_run(out / "runs" / r) for r in runs]
    title = config.title or f"{Path(config.data).name} {config.split}: fine-tuned {config.model}"
    text = f"### {title}\n\nGenerated by `{command}`.\n\n" + table(loaded) + "\n![bars](bars.png)\n"
    bars(loaded, report / "bars.png", title)
    pairs = [("fine-tuned AdaptRec beats fine-tuned zero-shot", "tuned-zero-shot", "tuned-static"),
             ("self-adaptive selection beats static", "tuned-static", "tuned-adaptive"),
             ("fine-tuning helps (zero-shot)", "untuned-zero-shot", "tuned-zero-shot"),
             ("fine-tuning helps (AdaptRec)", "untuned-static", "tuned-static")]
    for tuned in ("tuned-zero-shot", "tuned-static", "tuned-adaptive"):
        pairs += [(f"{tuned} vs Popularity", "popularity", tuned), (f"{tuned} vs SASRec", "sasrec", tuned),
                  (f"{tuned} vs UserKNN", "userknn", tuned), (f"{tuned} vs demo-match", "demo-match", tuned)]
    data = claims_data(out / "runs", pairs)
    text += "\n#### Paired claims\n\n" + claims(out / "runs", pairs, data=data)
    write_json(report / "claims.json", data)
    write_json(report / "runs.json", runs_data(loaded))
    exposure = target_exposure(config)
    section, split_data = exposure_text([(r, out / "runs" / r) for r in runs], exposure, config.m, config.demo_items)
    text += "\n#### Does the model read the demonstrations?\n\n" + section
    write_json(report / "exposure.json", {"shown": sum(1 for v in exposure.values() if v), "rows": len(exposure),
                                          "m": config.m, "demo_items": config.demo_items, "runs": split_data})
    text += diagnostics_section(config, out)
    sample = json.loads((out / "sample.json").read_text())
    text += (f"\nTraining sample: {sample['train_rows']} windows (seed {sample['seed']}), target list positions "
             f"{sample['target_positions']}.\n")
    train_seconds, resumed = 0.0, False
    for variant in config.variants:
        manifest = out / "train" / variant / "adaptrec_manifest.json"
        if manifest.is_file():
            m = json.loads(manifest.read_text())
            losses = [e["loss"] for e in m["log_history"] if "loss" in e]
            seconds = m.get("train_seconds_this_invocation") or 0.0
            examples = m["steps"] * config.batch_size * config.grad_accum
            if m.get("resumed_from") is None:  # one invocation did every step: its time is the training time
                timing = (f"{seconds:.0f} s of training ({seconds / examples:.1f} s/example, "
                          f"{seconds / 3600:.2f} h)")
                train_seconds += seconds
            else:
                timing = f"{seconds:.0f} s in the last invocation (resumed from {m['resumed_from']})"
                resumed = True
            text += (f"- `{variant}`: {m['steps']} steps of {config.batch_size * config.grad_accum} examples, loss "
                     f"(first -> last logged step) {losses[0]:.3f} -> {losses[-1]:.3f}, {timing}\n")
            png = out / "train" / variant / "loss.png"
            if png.is_file():
                (report / f"loss-{variant}.png").write_bytes(png.read_bytes())
                text += f"\n![loss {variant}](loss-{variant}.png)\n"
    lm_seconds = sum(r["results"].get("lm_seconds") or 0.0 for r in loaded)
    text += (f"\nCPU time: training {train_seconds / 3600:.2f} h{' (+ resumed runs, see above)' if resumed else ''}, "
             f"LM evaluation {lm_seconds / 3600:.2f} h (`LM s` above), fp32, {config.device}, LoRA r={config.lora_r} on "
             f"`{config.lora_targets}`, activation checkpointing {'on' if config.gradient_checkpointing else 'off'}, loss "
             f"`{config.loss}`{diagnostics_seconds(config, out)}. "
             f"Prompt `{config.prompt}`, each similar user's last {config.demo_items or 'all'} items, candidate labels "
             f"`{config.labels}`, score mode `{config.mode}`.\n")
    (report / "table.md").write_text(text)
    return report


def target_exposure(config: SFTExperiment) -> dict[str, str | None]:
    """Example id -> where the static prompt of this experiment shows the target (`demo_exposure`), for the
    evaluated rows."""
    from adaptrec_prompts.data.prepare import load_prepared
    from adaptrec_prompts.evaluation.baselines.demo_match import DemoMatchBaseline, demo_exposure

    split = load_prepared(config.data)[config.split]
    rows = split.select(range(min(config.limit or split.num_rows, split.num_rows)))
    program = DemoMatchBaseline([], n_retrieve=config.n, m_select=config.m, demo_items=config.demo_items).program
    return {r["example_id"]: demo_exposure(r, program=program) for r in rows}


def diagnostics_seconds(config: SFTExperiment, out: Path) -> str:
    """", of which N s choice diagnostics" when the variants recorded them (they run inside the trainer, so
    the training seconds above include them)."""
    seconds = 0.0
    for variant in config.variants:
        path = out / "train" / variant / "choice_diagnostics.jsonl"
        if path.is_file():
            from adaptrec_prompts.finetune.callbacks import ChoiceDiagnostics

            seconds += sum(r.get("seconds") or 0.0 for r in ChoiceDiagnostics.read(path))
    return f" (the training times include {seconds:.0f} s of choice diagnostics)" if seconds else ""


def diagnostics_section(config: SFTExperiment, out: Path) -> str:
    """The choice diagnostics each variant recorded while training (`callbacks.ChoiceDiagnostics`), as a table:
    rows seen, slice, choice NLL against ln K, HR@1 and HR@1 by whether the target is shown."""
    import math

    lines, k = [], 20
    for variant in config.variants:
        path = out / "train" / variant / "choice_diagnostics.jsonl"
        if not path.is_file():
            continue
        from adaptrec_prompts.finetune.callbacks import ChoiceDiagnostics

        for d in ChoiceDiagnostics.read(path):  # one record per (step, slice), in step order
            k = d["k"]

            def part(value, n):
                return "-" if value is None else f"{value:.3f} (n={n})"

            lines.append(f"| {variant} | {d['step'] * config.batch_size * config.grad_accum} | {d['slice']} "
                         f"({d['n']}) | {d['choice_nll']:.3f} | {d['hr1']:.3f} | "
                         f"{part(d['hr1_target_shown'], d['n_target_shown'])} | "
                         f"{part(d['hr1_target_not_shown'], d['n_target_not_shown'])} | "
                         f"#{d['top1_position']} {100 * d['top1_position_share']:.0f}% |")
    if not lines:
        return ""
    return ("\n#### Is the choice learned? (recorded while training)\n\nEach variant's adapter scored in score mode on "
            "fixed slices (validation rows never used for training, and some of its own training rows) before "
            f"training and every few steps. Choice NLL: the cross-entropy of the target among the K = {k} candidates' "
            f"scores; chance is ln {k} = {math.log(k):.3f}. The loss plots show the same curves.\n\n"
            "| variant | rows seen | slice (n) | choice NLL | HR@1 | HR@1, target shown | HR@1, not shown | top-1 position |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(lines) + "\n")
