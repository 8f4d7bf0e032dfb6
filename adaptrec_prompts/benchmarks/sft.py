"""`adaptrec bench sft`: seconds per training example, TRL's default loss vs the answer-only-logits loss.

Both paths train a LoRA through TRL's `SFTTrainer` on the same AdaptRec training examples (rendered by
the DSPy adapter, tokenized as the local engine reads them), batch 1, one example per step, in the same
order. The default path is TRL's default loss on the full DSPy prompt with LoRA on every linear
projection; the fast path is the answer-only-logits loss, optionally with the compact prompt, shorter
demonstrations and another LoRA placement. The first step of each path is a warm-up and is not timed.
Before training, both losses are computed on the default path's first row and weights (dropout off):
they must agree.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from adaptrec_prompts.backends.presets import GEMMA_PRESET
from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.finetune.trainer import LORA_TARGETS


def _model_dir(model: str, data_dir: Path, template, rows: list[dict], work: Path) -> tuple[Path, str]:
    """(model folder, prompt format): the Gemma preset, a tiny Llama built from the data, or a folder."""
    if model == GEMMA_PRESET:
        from adaptrec_prompts.backends.gemma import gemma_270m_dir

        return gemma_270m_dir(), "plain"
    if model == "tiny":
        from adaptrec_prompts.backends.tiny import build_tiny_llama

        out = work / "tiny"
        build_tiny_llama(["\n\n".join(m["content"] for m in r["prompt"] + r["completion"]) for r in rows], out,
                         size="small", vocab_size=2000, chat_template=True)
        return out, "auto"
    return Path(model), "auto"


def run(data_dir: str | Path, model: str = "gemma-3-270m", rows: int = 6, selection: str = "static", m: int = 5,
        n: int = 10, lora_r: int = 16, seed: int = 0, prompt: str = "full", demo_items: int | None = None,
        lora_targets: str = "all", device: str = "cpu") -> dict:
    """Time both paths on the same training examples for `rows` steps each (plus a warm-up step).

    default: TRL's SFTTrainer loss, the full DSPy prompt, LoRA on all linear projections. fast: the
    answer-only-logits loss with `prompt`, `demo_items` and `lora_targets`. The two losses are also
    compared on the default path's first row and weights (they must agree). `device`: cpu, cuda (the first
    visible GPU), mps or auto (`devices.trainer_use_cpu`).
    """
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from adaptrec_prompts.data.prepare import load_manifest, load_prepared
    from adaptrec_prompts.data.render import manifest_template
    from adaptrec_prompts.finetune.losses import answer_only_loss, answer_only_trainer, tokenize_fn
    from adaptrec_prompts.finetune.rows import stage3_row
    from adaptrec_prompts.programs.adaptrec import AdaptRec
    from adaptrec_prompts.utils.devices import trainer_use_cpu

    use_cpu = trainer_use_cpu(device)  # before any data or model is loaded
    data_dir = Path(data_dir)
    train = load_prepared(data_dir)["train"]
    if "neighbor_example_ids" not in train.column_names and selection != "none":
        raise ConfigError(f"{data_dir} has no neighbour columns: run `adaptrec index neighbors` first")
    if lora_targets not in LORA_TARGETS:
        raise ConfigError(f"lora_targets must be one of {sorted(LORA_TARGETS)}, got {lora_targets!r}")
    template = manifest_template(load_manifest(data_dir))
    examples = [row for row in train if selection == "none" or row["neighbor_example_ids"]][: rows + 1]
    if len(examples) < rows + 1:
        raise ConfigError(f"{data_dir}: fewer than {rows + 1} training rows have neighbours")
    setups = {
        "default": (SFTTrainer, AdaptRec(template, selection=selection, n_retrieve=n, m_select=m, mode="score"),
                    "all"),
        "fast": (answer_only_trainer(), AdaptRec(template, selection=selection, n_retrieve=n, m_select=m,
                                                 mode="score", prompt=prompt, demo_items=demo_items), lora_targets),
    }
    work = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    model_dir, prompt_format = _model_dir(model, data_dir, template,
                                          [stage3_row(setups["default"][1], r) for r in examples], work)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    class Timer(TrainerCallback):
        def __init__(self, device):
            self.steps: list[float] = []
            # on a GPU, wait for the step's kernels: the time is the work, not its launch
            self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        def on_step_begin(self, args, state, control, **kwargs):
            self.sync()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.sync()
            self.steps.append(time.perf_counter() - self.started)

    out: dict = {"model": str(model), "rows": rows, "selection": selection, "m": m, "lora_r": lora_r,
                 "threads": torch.get_num_threads(), "prompt": prompt, "demo_items": demo_items,
                 "lora_targets": lora_targets}
    for name, (cls, program, targets) in setups.items():
        torch.manual_seed(seed)
        net = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        encoded = [tokenize_fn(net, tokenizer, prompt_format)(stage3_row(program, r)) for r in examples]
        config = SFTConfig(output_dir=str(work / name), per_device_train_batch_size=1, max_steps=rows + 1,
                           learning_rate=1e-4, logging_steps=1, save_strategy="no", report_to="none", seed=seed,
                           bf16=False, dataset_kwargs={"skip_prepare_dataset": True}, max_length=None,
                           disable_tqdm=True, use_cpu=use_cpu)
        out["device"] = str(config.device)  # where the Trainer puts the model
        timer = Timer(config.device)
        trainer = cls(model=net, args=config, train_dataset=datasets.Dataset.from_list(encoded),
                      processing_class=tokenizer, callbacks=[timer],
                      peft_config=LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0,
                                             target_modules=LORA_TARGETS[targets], task_type="CAUSAL_LM"))
        if name == "default":  # both losses on the same row and weights
            batch = {k: v.to(config.device) for k, v in trainer.data_collator([encoded[0]]).items()}
            trainer.model.eval()
            with torch.no_grad():
                out["loss_default"] = float(trainer.compute_loss(trainer.model, dict(batch)))
                out["loss_fast"] = float(answer_only_loss(trainer.model, dict(batch))[0])
            trainer.model.train()
        trainer.train()
        timed = timer.steps[1:]
        tokens = statistics.mean(len(e["input_ids"]) for e in encoded)
        out[name] = {"s_per_example": statistics.mean(timed), "tokens": tokens,
                     "tokens_per_s": tokens / statistics.mean(timed), "steps_timed": len(timed),
                     "answer_tokens": statistics.mean(sum(1 for x in e["labels"] if x != -100) for e in encoded)}
    out["ratio"] = out["default"]["s_per_example"] / out["fast"]["s_per_example"]
    out["loss_abs_diff"] = abs(out["loss_default"] - out["loss_fast"])
    return out
