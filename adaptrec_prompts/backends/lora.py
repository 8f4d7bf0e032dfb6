"""peft LoRA adapter folders (`--adapter`): what a folder may hold, and the base model and prompt it was trained for.

`check_adapter` runs before peft reads a folder (`HFEngine.load`): only what the project's training writes is
accepted (docs/failure-behaviour.md). peft turns some adapter_config.json fields into behaviour: `auto_mapping`
names classes to build, `megatron_core` a module to import, `layer_replication` rewires the base model's
layers, and a weights file other than `adapter_model.safetensors` is a pickle that `torch.load` would read.
Those are refused, as is a key this peft's `LoraConfig` does not have. An adapter is then checked against the
base model it is loaded on: the architecture numbers of the base it was trained on (recorded by training in
adaptrec_manifest.json, or read from the folder adapter_config.json names) must match, so an adapter trained
on another base (another vocabulary) is refused instead of silently applied.

`trained_settings` reads the prompt settings (prompt, labels, demo_items) the adapter was trained with, which
`runs.run_eval` uses as defaults and refuses to contradict (an adapter answers in the prompt it was trained on).

`export_adapter` writes the folder to ship: the LoRA weights in fp16 (half the bytes; loaded onto an fp32 base
they are cast back) and the training record, without the checkpoints, the tokenizer copy or TRL's pickled
training_args.bin.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from adaptrec_prompts.errors import ConfigError

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
MANIFEST = "adaptrec_manifest.json"
# the base model's numbers an adapter depends on (config.json; a nested text_config counts too)
ARCHITECTURE = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "intermediate_size")
# adapter_config.json fields that make peft import, build or rewire something: allowed only at these values.
# (`auto_mapping` is read by peft's AutoPeftModel only, never by PeftModel.from_pretrained here; peft writes a
# transformers class into it for a model without task_type, which is allowed, anything else is not.)
INERT = {"megatron_config": (None,), "megatron_core": (None, "megatron.core"), "layer_replication": (None,)}
SETTINGS = ("prompt", "labels", "demo_items")
# what an exported adapter keeps besides the weights: peft's config, the training record and its curves
EXPORTED = (ADAPTER_CONFIG, MANIFEST, "adaptrec_train_settings.json", "choice_diagnostics.jsonl", "loss.png")  # what an adapter's prompt was (AdaptRec.config(), defaults left out)


def architecture(model_dir: str | Path) -> dict | None:
    """The `ARCHITECTURE` numbers of a local model folder's config.json (None when there is none)."""
    file = Path(model_dir) / "config.json"
    if not file.is_file():
        return None
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{file}: not a readable model config ({exc}); re-download or rebuild the model") from None
    merged = {**config, **(config.get("text_config") or {})}
    return {k: merged.get(k) for k in ARCHITECTURE if merged.get(k) is not None}


def _read_json(file: Path, fix: str) -> dict:
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{file}: not readable JSON ({str(exc)[:120]}); {fix}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{file}: expected a JSON object, got {type(value).__name__}; {fix}")
    return value


def manifest(adapter: str | Path) -> dict | None:
    """The adapter's adaptrec_manifest.json (written by `finetune.trainer.train`), or None for an adapter from elsewhere."""
    file = Path(adapter) / MANIFEST
    return _read_json(file, "train the adapter again or remove the file") if file.is_file() else None


def check_adapter(adapter: str | Path, model_dir: str | Path) -> None:
    """Refuse an adapter folder peft should not read, or one trained on another base model than `model_dir`.

    Raises:
        ConfigError: naming the folder, the file or key, and the fix.
    """
    import dataclasses

    from peft import LoraConfig

    folder = Path(adapter)
    fix = "pass a folder written by `adaptrec sft-experiment` or finetune/sft.py (adapter_config.json, " \
          f"{WEIGHTS})"
    if not (folder / ADAPTER_CONFIG).is_file():
        raise ConfigError(f"--adapter {str(adapter)!r}: no {ADAPTER_CONFIG} there; {fix}")
    config = _read_json(folder / ADAPTER_CONFIG, fix)
    known = {f.name for f in dataclasses.fields(LoraConfig)}
    for key in sorted(config):
        if key not in known:
            raise ConfigError(f"{folder / ADAPTER_CONFIG}: key {key!r} is not a LoRA setting of this peft; the project "
                              "writes only LoraConfig's fields: remove it, or train the adapter again")
    if config.get("peft_type") != "LORA":
        raise ConfigError(f"{folder / ADAPTER_CONFIG}: peft_type {config.get('peft_type')!r}; only LoRA adapters "
                          "(peft_type LORA) are loaded")
    for key, allowed in INERT.items():
        if config.get(key) not in allowed:
            raise ConfigError(f"{folder / ADAPTER_CONFIG}: {key}={config.get(key)!r} would make peft import, build or "
                              f"rewire code; the project writes {allowed[0]!r}: remove it, or train the adapter again")
    mapping = config.get("auto_mapping")
    if mapping is not None and not (isinstance(mapping, dict) and set(mapping) <= {"base_model_class", "parent_library"}
                                    and str(mapping.get("parent_library", "")).startswith("transformers.")):
        raise ConfigError(f"{folder / ADAPTER_CONFIG}: auto_mapping={mapping!r} names code outside transformers to "
                          "build; the project writes null (or what peft writes: a transformers class): remove it, or "
                          "train the adapter again")
    if not (folder / WEIGHTS).is_file():
        pickles = sorted(p.name for p in folder.glob("adapter_model.*"))
        raise ConfigError(f"--adapter {folder}: no {WEIGHTS}" + (f" (found {', '.join(pickles)}: a pickle, not "
                          "loaded)" if pickles else "") + f"; {fix}")
    base_now = architecture(model_dir)
    recorded = manifest(folder) or {}
    trained_on = recorded.get("base_model_architecture")
    where = f"{folder / MANIFEST} (base_model_architecture)"
    if trained_on is None:  # adapters trained before the record: the base folder they name, when it is here
        named = recorded.get("base_model") or config.get("base_model_name_or_path")
        if named and Path(named).is_dir():
            trained_on, where = architecture(named), f"the base it names, {named}"
    if base_now is None or trained_on is None:
        logger.warning("--adapter %s: cannot check it against the base model %s (no architecture recorded or "
                       "found); make sure it was trained on this model", folder, model_dir)
        return
    differ = {k: (trained_on.get(k), base_now.get(k)) for k in ARCHITECTURE
              if k in trained_on and k in base_now and trained_on[k] != base_now[k]}
    if differ:
        what = ", ".join(f"{k} {a} (trained) vs {b} (this model)" for k, (a, b) in differ.items())
        raise ConfigError(f"--adapter {folder} was trained on another base model than {model_dir}: {what}, from "
                          f"{where}; load it on the model it was trained on (--lm hf:{config.get('base_model_name_or_path')})"
                          " or train an adapter on this one")


def trained_settings(adapter: str | Path) -> dict | None:
    """{"prompt", "labels", "demo_items"} the adapter was trained with (its manifest's program config), or None
    for an adapter without adaptrec_manifest.json."""
    recorded = manifest(adapter)
    if recorded is None or not isinstance(recorded.get("program"), dict):
        return None
    program = recorded["program"]  # AdaptRec.config() leaves the defaults out
    return {"prompt": program.get("prompt") or "full", "labels": program.get("labels") or "numbers",
            "demo_items": program.get("demo_items")}


def export_adapter(adapter: str | Path, out: str | Path, *, dtype: str = "float16", overwrite: bool = False) -> Path:
    """Write a shippable copy of a trained adapter folder to `out` and return `out`.

    The LoRA weights are cast to `dtype` (float16 or bfloat16; float32 keeps them); adapter_config.json, the
    training manifest (with an `exported` record: source folder, dtype, the sha256 of both weight files) and the
    diagnostics and loss curve are copied. Checkpoints, tokenizer files and training_args.bin (a pickle) are
    not. A manifest without the base model's architecture numbers (adapters trained before they were recorded)
    gets them from the base folder it names, so `check_adapter` can check the copy wherever it is loaded.

    Raises:
        ConfigError: `adapter` is not an adapter folder, or `dtype` is not one of the three.
        OutputExistsError: `out` exists and `overwrite` is False.
    """
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from adaptrec_prompts.data._io import sha256_file
    from adaptrec_prompts.errors import OutputExistsError

    dtypes = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    if dtype not in dtypes:
        raise ConfigError(f"export_adapter: dtype={dtype!r}; use one of {', '.join(dtypes)}")
    src, out = Path(adapter), Path(out)
    for name in (ADAPTER_CONFIG, WEIGHTS):
        if not (src / name).is_file():
            raise ConfigError(f"export_adapter: {src} has no {name}; pass a folder written by `adaptrec "
                              "sft-experiment` or finetune/sft.py")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"export_adapter: {out} exists; choose another folder or pass overwrite=True")
    tensors = load_file(src / WEIGHTS)
    cast = {k: (v.to(dtypes[dtype]) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    staging = out.parent / (out.resolve().name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        save_file(cast, staging / WEIGHTS, metadata={"format": "pt"})
        for name in EXPORTED:
            if (src / name).is_file() and name != MANIFEST:
                shutil.copy2(src / name, staging / name)
        recorded = manifest(src)
        if recorded is not None:
            if recorded.get("base_model_architecture") is None and recorded.get("base_model"):
                recorded["base_model_architecture"] = architecture(recorded["base_model"])
            recorded["exported"] = {"from": str(src), "dtype": dtype,
                                    "source_weights_sha256": sha256_file(src / WEIGHTS),
                                    "weights_sha256": sha256_file(staging / WEIGHTS)}
            (staging / MANIFEST).write_text(json.dumps(recorded, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # nothing half-written is left behind
        raise
    if out.is_dir() and not out.is_symlink():
        shutil.rmtree(out)
    elif out.exists() or out.is_symlink():
        out.unlink()
    staging.rename(out)
    return out
