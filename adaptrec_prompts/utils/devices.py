"""`--device`: where a local model runs, with one spelling and one check for every command that runs one
(`eval`, `experiment`, `sft-experiment`, `pipeline`, `compile`, `index` with the lm/text embedders, `bench
modes`, `bench sft`, `finetune/sft.py`).

Values: "cpu"; "cuda" (the current CUDA device, GPU 0 unless told otherwise); "cuda:N" (GPU N); "mps"
(Apple GPUs); "auto" (CUDA when torch sees a GPU, else the CPU). A misspelt value is refused when the
options are read, before any data or model is loaded, and a GPU that torch cannot see is refused when the
model would be placed on it, both with an error that names the option and what to use instead.

This module imports torch only inside the functions that ask torch (the CLI stays light).
"""

from __future__ import annotations

import re

from adaptrec_prompts.errors import ConfigError

DEVICES = "cpu, cuda, cuda:N (GPU N, e.g. cuda:1), mps or auto"
DEVICE_HELP = "local models: cpu, cuda, cuda:N, mps or auto (CUDA when available)"
_DEVICE = re.compile(r"cpu|mps|auto|cuda(:\d+)?")


def device_problem(device: object) -> str | None:
    """Why `device` is not a device name, or None when it is one (the syntax only; no GPU is asked)."""
    if isinstance(device, str) and _DEVICE.fullmatch(device):
        return None
    return f"{device!r} is not a device; use {DEVICES}"


def check_device(device: object, name: str = "--device") -> str:
    """`device` when it is a device name; else a ConfigError that starts with `name` (the option or field)."""
    problem = device_problem(device)
    if problem:
        raise ConfigError(f"{name}: {problem}")
    return device  # type: ignore[return-value]


def resolve_device(device: str, name: str = "--device") -> str:
    """The torch device a name means here: "auto" becomes "cuda" or "cpu"; a GPU that torch cannot see is
    a ConfigError that names `name` and says what to use instead."""
    import torch

    check_device(device, name)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but torch sees no CUDA device here (torch "
                              f"{torch.__version__}); use {name} cpu or {name} auto")
        index = device.partition(":")[2]
        count = torch.cuda.device_count()
        if index and int(index) >= count:
            raise ConfigError(f"{name} {device}: torch sees {count} CUDA device(s) here (cuda:0 to cuda:{count - 1})")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{name} mps: torch sees no Apple GPU (MPS) here; use {name} cpu or {name} auto")
    return device


def trainer_use_cpu(device: str, name: str = "--device") -> bool:
    """`TrainingArguments.use_cpu` for a device. In one process, transformers' Trainer trains on the CPU or
    on the first GPU it sees (cuda:0; MPS on a Mac), so "cuda:N" for N > 0 is refused with the way to get
    there (CUDA_VISIBLE_DEVICES), rather than training on another GPU than the one asked for."""
    resolved = resolve_device(device, name)
    if resolved == "cpu":
        return True
    if resolved not in ("cuda", "cuda:0", "mps"):
        raise ConfigError(f"{name} {device}: training (transformers' Trainer, one process) runs on the first visible "
                          f"GPU; select GPU {resolved.partition(':')[2]} with CUDA_VISIBLE_DEVICES="
                          f"{resolved.partition(':')[2]} and use {name} cuda")
    return False
