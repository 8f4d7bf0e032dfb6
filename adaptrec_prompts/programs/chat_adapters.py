"""DSPy adapters for evaluation and fine-tuning.

`eval_adapter()`: DSPy's `ChatAdapter` without its silent JSON-adapter retry (a parse failure is an invalid
output, never a second call). `CompactAdapter`: the same field markers and parsing with a short system
message (only the signature's instructions) and no output-format reminder: DSPy's field descriptions and
structure template are written for instruction-following chat models and cost a base model hundreds of
tokens per example in every prefill and every training step. A program with `prompt="compact"` renders
both its inference calls and its SFT rows through it, so training and inference stay byte-identical.
"""

from __future__ import annotations

import textwrap

import dspy

from adaptrec_prompts.errors import ConfigError

PROMPTS = ("full", "compact")


def eval_adapter() -> dspy.ChatAdapter:
    """The adapter for evaluation and SFT: ChatAdapter without the silent JSON retry (docs/design.md)."""
    return dspy.ChatAdapter(use_json_adapter_fallback=False)


class CompactAdapter(dspy.ChatAdapter):
    """ChatAdapter with the instructions as the whole system message and no output-format reminder."""

    def __init__(self):
        super().__init__(use_json_adapter_fallback=False)

    def format_system_message(self, signature) -> str:
        return textwrap.dedent(signature.instructions).strip()

    def user_message_output_requirements(self, signature) -> str | None:
        return None


def adapter_for(prompt: str) -> dspy.ChatAdapter:
    """The adapter a program with this `prompt` style renders through: "full" keeps whatever adapter the
    caller configured (dspy.settings.adapter, else `eval_adapter()`), "compact" is always `CompactAdapter`."""
    if prompt == "compact":
        return CompactAdapter()
    return dspy.settings.adapter or eval_adapter()


def check_prompt(prompt: str) -> str:
    """`prompt` if it names an adapter (`PROMPTS`).

    Raises:
        ConfigError: any other value.
    """
    if prompt not in PROMPTS:
        raise ConfigError(f"prompt must be one of {PROMPTS}, got {prompt!r}")
    return prompt
