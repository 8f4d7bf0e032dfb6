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
    check_request_settings(kwargs.get("timeout"), num_retries)
    check_api_model(model, api_base)
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
# Providers that speak OpenAI's HTTP API (GET {base}/models lists what a server serves).
OPENAI_COMPATIBLE = ("openai", "hosted_vllm")
LM_FORMS = ("hf:PATH (a local model folder), gemma-3-270m, or provider/model for an API "
            "(e.g. openai/gpt-4o-mini; openai/NAME with --api-base for vLLM or llama.cpp)")


def check_request_settings(timeout: float | None, num_retries: int | None, retries: int | None = None) -> None:
    """Refuse request settings that cannot work, naming the option and its valid range.

    Raises:
        ConfigError: `timeout` not a number of seconds > 0, `num_retries` or `retries` not a whole number >= 0.
    """
    import math

    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not math.isfinite(timeout) or timeout <= 0):
        raise ConfigError(f"--timeout {timeout!r}: must be a number of seconds > 0 (e.g. 120), the time one request "
                          "may take before it is abandoned")
    for option, value in (("--num-retries", num_retries), ("--retries", retries)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ConfigError(f"{option} {value!r}: must be a whole number >= 0 (0: no retry)")


def base_url(api_base: str | None = None) -> str | None:
    """The server an API LM talks to: `api_base`, else one named by the environment (None: the provider's)."""
    return api_base or next((os.environ[v] for v in BASE_URL_VARIABLES if os.environ.get(v)), None)


def check_api_model(spec: str, api_base: str | None = None) -> None:
    """Offline checks of an API `--lm` before anything runs: the name resolves to a provider, and the
    provider's key variable is set (DSPy's OpenAI client needs one even for a local server).

    Raises:
        ConfigError: an unknown model name or provider, or a missing key variable (named).
    """
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # litellm prints a provider list on a failed lookup
        import litellm

        try:
            _, provider, _, _ = litellm.get_llm_provider(spec, api_base=api_base)
        except Exception:  # litellm.BadRequestError: it names no provider it knows
            provider = None
    if provider is None or spec.endswith("/"):
        raise ConfigError(f"--lm {spec!r} names no model a provider is known for; use {LM_FORMS}")
    try:
        missing = litellm.validate_environment(model=spec, api_base=api_base).get("missing_keys") or []
    except Exception:  # a provider litellm cannot check offline: the first request will tell
        missing = []
    keys = [k for k in missing if k.endswith(("_KEY", "_TOKEN"))]
    if keys:
        server = base_url(api_base)
        raise ConfigError(f"{keys[0]} is not set: --lm {spec} needs it (it is read from the environment, never "
                          "written)" + (f"; the server at {server} needs some value even if it checks none: e.g. "
                                        f"export {keys[0]}=unused" if server else f"; export {keys[0]}=..."))


def request_time_bound(timeout: float, num_retries: int) -> float:
    """The longest one LM call can take when every attempt times out: `num_retries + 1` attempts of `timeout`
    seconds, plus dspy.LM's backoff between them (1, 2, 4, ... s, at most 60). DSPy owns the retries: it calls
    LiteLLM and its native client with their own retries off (num_retries=0)."""
    return timeout * (num_retries + 1) + sum(min(2 ** a, 60) for a in range(num_retries))


def probe_server(spec: str, api_base: str | None = None, timeout: float = 120.0) -> list[str] | None:
    """One request before a run, to a custom OpenAI-compatible server: GET {base}/models (free: no tokens).

    It refuses what it can tell for sure: no server, a server that does not answer within `timeout`, a
    refused key (401/403), a reply that is not JSON (a web page or proxy, not the API root). A server without
    the listing (404, 405, 501) tells nothing: the run starts and its first request speaks. Nothing is probed
    for a provider's own endpoint (no base URL) or a provider that is not OpenAI-compatible.

    Returns:
        The model names the server lists (None when it lists none or was not probed).

    Raises:
        ConfigError: the server cannot serve this run; the message names the URL, key or option to fix.
    """
    import json
    import logging
    import threading

    import httpx

    server = base_url(api_base)
    if not server or spec.split("/", 1)[0] not in OPENAI_COMPATIBLE:
        return None
    url = server.rstrip("/") + "/models"
    key = next((os.environ[v] for v in ("OPENAI_API_KEY", "HOSTED_VLLM_API_KEY") if os.environ.get(v)), None)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    option = "--api-base" if api_base else next(v for v in BASE_URL_VARIABLES if os.environ.get(v))
    slow = threading.Timer(min(10.0, timeout / 2), logging.getLogger(__name__).warning, args=(
        "slow request: the server at %s has not answered GET %s after %.0f s (gives up after %g s, --timeout)",
        server, url, min(10.0, timeout / 2), timeout))
    slow.daemon = True
    slow.start()
    try:
        reply = httpx.get(url, headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        raise ConfigError(f"the server at {server} ({option}) accepted no request or sent no answer to GET {url} "
                          f"within --timeout {timeout:g} s: it is stuck, overloaded or not an HTTP server; restart "
                          "it or check the URL (a slow server needs a larger --timeout)") from None
    except httpx.HTTPError as exc:
        raise ConfigError(f"no server answers at {server} ({option}): {type(exc).__name__}: {exc}; start the "
                          f"server or fix {option}") from None
    finally:
        slow.cancel()
    if reply.status_code in (401, 403):
        raise ConfigError(f"the server at {server} refused the API key (HTTP {reply.status_code} on GET {url}): "
                          + ("set OPENAI_API_KEY to a key it accepts" if key else "OPENAI_API_KEY is not set"))
    if reply.status_code != 200:  # no listing here (404, 405, 501, ...): the first request will tell
        return None
    try:
        listing = json.loads(reply.text)
    except ValueError:
        kind = reply.headers.get("content-type", "no content type")
        raise ConfigError(f"the server at {server} ({option}) answered GET {url} with {kind}, not JSON "
                          f"({reply.text[:60]!r}): it is not an OpenAI-compatible API root; {option} is usually "
                          "http://HOST:PORT/v1 (a web page or a proxy answered)") from None
    data = listing.get("data") if isinstance(listing, dict) else None
    return [str(m.get("id")) for m in data if isinstance(m, dict)] if isinstance(data, list) else None


def explain_lm_error(exc: BaseException, model: str | None, api_base: str | None = None) -> str | None:
    """A message that says what is wrong (key, URL, model name, server) for an LM error that no retry can fix
    (DSPy's LMAuthError, LMNotConfiguredError, LMUnsupportedModelError, LMInvalidRequestError,
    LMProviderError); None for any other exception."""
    from dspy.utils import exceptions as dx

    found = exc
    while found is not None and not isinstance(found, dx.LMError):
        found = found.__cause__ or found.__context__
    if found is None:
        return None
    server = base_url(api_base)
    where = f"the server at {server}" if server else f"the provider of {model}"
    status = f"HTTP {found.status}: " if getattr(found, "status", None) else ""
    detail = str(found)[:300]
    if isinstance(found, dx.LMNotConfiguredError):
        return f"--lm {model} is not configured: {detail}; export the key named there (never written to a file)"
    if isinstance(found, dx.LMAuthError) or getattr(found, "status", None) in (401, 403):
        return (f"{where} refused the API key ({status}{detail}): set OPENAI_API_KEY (or the provider's key "
                "variable) to a key it accepts")
    if isinstance(found, dx.LMUnsupportedModelError):
        return (f"{where} does not serve the model named by --lm {model} ({status}{detail}): check the name after "
                "the provider prefix" + (f" (GET {server.rstrip('/')}/models lists what it serves)" if server else ""))
    if getattr(found, "status", None) == 404:
        return (f"{where} answered HTTP 404 (not found) for --lm {model}: the URL or the model name is wrong; "
                + (f"--api-base {server} should be the API root, usually ending in /v1" if server else
                   "check the model name"))
    if isinstance(found, dx.LMInvalidRequestError):
        return f"{where} rejected the request for --lm {model} ({status}{detail}): check --lm and the server's options"
    if isinstance(found, (dx.LMProviderError, dx.LMUnexpectedError, dx.LMConfigurationError,
                          dx.LMUnsupportedFeatureError)):
        return (f"{where} sent a reply that is not a chat completion for --lm {model} ({detail}); check that "
                + (f"--api-base {server} is an OpenAI-compatible API root (usually ending in /v1)" if server else
                   "the model name and provider are right"))
    return None


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
    if adapter and is_local(spec):
        check_adapter_dir(adapter)  # before the base model loads
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


def check_adapter_dir(adapter: str | os.PathLike) -> None:
    """Refuse an `--adapter` that is not a peft adapter folder, before any model loads.

    Raises:
        ConfigError: the folder is missing or holds no adapter_config.json.
    """
    from pathlib import Path

    folder = Path(adapter)
    if not folder.is_dir():
        raise ConfigError(f"--adapter {str(adapter)!r}: no such folder; pass the folder a fine-tune wrote (peft "
                          "files adapter_config.json and adapter_model.safetensors, e.g. OUT/train/static of "
                          "`adaptrec sft-experiment`)")
    if not (folder / "adapter_config.json").is_file():
        raise ConfigError(f"--adapter {str(adapter)!r}: no adapter_config.json in the folder, so it is not a peft "
                          "LoRA adapter; pass the folder a fine-tune wrote (e.g. OUT/train/static of "
                          "`adaptrec sft-experiment`)")
