"""API backends through `dspy.LM`, and the one function that turns an `--lm` spec into an LM.

Keys come from the environment only (e.g. OPENAI_API_KEY, read by the provider client); they are
never passed through our configs, results, manifests or saved programs.
"""

from __future__ import annotations

import os

import dspy

from adaptrec_prompts.backends.presets import GEMMA_PRESET
from adaptrec_prompts.errors import ConfigError


def api_lm(model: str, api_base: str | None = None, temperature: float = 0.0, max_tokens: int = 256,
           cache: bool = True, num_retries: int = 3, **kwargs) -> dspy.LM:
    """`dspy.LM` for any provider DSPy supports; `api_base` for OpenAI-compatible servers (vLLM, llama.cpp).

    Example:
        >>> lm = api_lm("openai/gpt-4o-mini")  # doctest: +SKIP
        >>> lm = api_lm("openai/my-adapter", api_base="http://127.0.0.1:8000/v1")  # doctest: +SKIP
    """
    if "api_key" in kwargs:
        raise ConfigError("pass API keys through the environment (e.g. OPENAI_API_KEY), not as an argument")
    if api_base:
        kwargs["api_base"] = api_base
    if api_base or any(os.environ.get(v) for v in BASE_URL_VARIABLES):
        # DSPy's response cache leaves the server out of its key (dspy.clients.lm ignores api_base/base_url), so a
        # cached answer from one server would be served for another: no cache for custom servers, whether named
        # by --api-base or by the environment (the harness log still resumes runs)
        cache = False
    return dspy.LM(model, temperature=temperature, max_tokens=max_tokens, cache=cache, num_retries=num_retries,
                   **kwargs)


# Environment variables through which OpenAI clients (and litellm) pick another server than the provider's.
BASE_URL_VARIABLES = ("OPENAI_BASE_URL", "OPENAI_API_BASE")


def is_local(spec: str) -> bool:
    """Whether an --lm spec runs in-process (`hf:PATH` or the Gemma preset) rather than behind an API."""
    return spec.startswith("hf:") or spec == GEMMA_PRESET


def local_model_dir(spec: str) -> str:
    """The model folder behind a local --lm spec (the Gemma preset's dense copy is built on first use).

    Raises:
        ConfigError: the spec names an API model.
    """
    if spec == GEMMA_PRESET:
        from adaptrec_prompts.backends.gemma import gemma_270m_dir

        return str(gemma_270m_dir())
    if spec.startswith("hf:"):
        return spec[3:]
    raise ConfigError(f"{spec!r} is an API model: pass a local model folder (--embed-model PATH)")


def make_lm(spec: str, adapter: str | None = None, api_base: str | None = None, **kwargs) -> dspy.LM:
    """`hf:PATH` -> local Hugging Face model (+ optional peft adapter); `gemma-3-270m` -> that preset;
    anything else -> `api_lm(spec)`."""
    if spec == GEMMA_PRESET:
        from adaptrec_prompts.backends.gemma import gemma_lm

        return gemma_lm(adapter=adapter, **kwargs)
    if spec.startswith("hf:"):
        from adaptrec_prompts.backends.hf import hf_lm

        return hf_lm(spec[3:], adapter=adapter, **kwargs)
    if adapter:
        raise ConfigError("--adapter applies to local models (hf:PATH); serve an adapter behind an "
                          "OpenAI-compatible server (vLLM --lora-modules) for API use")
    return api_lm(spec, api_base=api_base, **kwargs)
