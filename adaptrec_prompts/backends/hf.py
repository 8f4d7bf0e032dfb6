"""A local Hugging Face causal LM (+ optional peft LoRA adapter) as a DSPy engine, with scoring.

`HFEngine` implements DSPy 3.4's engine contract (`complete(Request) -> Response`; the deprecated
`BaseLM.forward` is not used) and plugs in with `dspy.LM("local/<name>", engine=HFEngine(...))`
(`hf_lm` does this). It also offers:

- `generate(list_of_messages)`: batched greedy generation (left padding) that stops at the adapter's
  end marker `[[ ## completed ## ]]` (or EOS / max_new_tokens);
- `score(messages, completions)`: the log-likelihood of each completion after the same prompt, from
  one prefill whose KV cache is expanded to all completions (docs/design.md, Inference modes); `score_separately` is the
  K-passes reference it is tested against.

Prompts use the tokenizer's chat template when it has one; base models without a template get a plain
rendering (message contents joined by blank lines), which is what base models continue sensibly.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dspy
import torch
from dspy.lm15 import Message, Response, TextPart, Usage, response_to_events
from transformers import AutoModelForCausalLM, AutoTokenizer

from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.utils.devices import resolve_device
from adaptrec_prompts.utils.progress import library_bars

END_MARKER = "[[ ## completed ## ]]"
PROMPT_FORMATS = ("auto", "chat", "plain")


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int


_FIRST_FIELD = re.compile(r"starting with the field `(\[\[ ## \w+ ## \]\])`")


def first_field_header(messages: Sequence[dict]) -> str | None:
    """The ChatAdapter header of the first output field the last message asks for, plus a newline."""
    match = _FIRST_FIELD.search(messages[-1]["content"]) if messages else None
    return f"{match[1]}\n" if match else None


def request_messages(request) -> list[dict]:
    """A dspy.lm15 Request as OpenAI-style message dicts (system first)."""
    messages = []
    if request.system is not None:
        system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system)
        messages.append({"role": "system", "content": system})
    messages.extend({"role": m.role, "content": m.text or ""} for m in request.messages)
    return messages


class HFEngine:
    """Local causal LM engine for DSPy. Holds the model; DSPy modules never do.

    Build it with `HFEngine.load(model_path, adapter=None, dtype="float32", ...)`, or around live objects
    (`HFEngine(model, tokenizer)`, e.g. the model being fine-tuned).

    Args:
        model: a transformers causal LM (optionally peft-wrapped).
        tokenizer: its tokenizer.
        max_new_tokens: generation budget.
        prompt_format: "auto" (chat template if the tokenizer has one, else plain), "chat" or "plain".
        stop: strings that end generation (default: the ChatAdapter's end marker).
    """

    def __init__(self, model, tokenizer, max_new_tokens: int = 64, prompt_format: str = "auto",
                 stop: Sequence[str] = (END_MARKER,), name: str = "model", prefill_field: bool = False):
        if prompt_format not in PROMPT_FORMATS:
            raise ConfigError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
        self.model, self.tokenizer, self.name = model, tokenizer, name
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        self.max_new_tokens = max_new_tokens
        self.stop = tuple(stop)
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        if prompt_format == "chat" and not has_template:
            raise ConfigError(f"{name}: the tokenizer has no chat template; use prompt_format='plain'")
        self.use_chat = prompt_format == "chat" or (prompt_format == "auto" and has_template)
        # Base models: write the first output field's header into the prompt, generate one line, and
        # give the adapter back "header + line + end marker" (what a chat model would have written).
        self.prefill_field = prefill_field
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        """Where the model's weights are; every input tensor is created there."""
        return next(self.model.parameters()).device

    @classmethod
    def load(cls, model_path: str | Path, adapter: str | Path | None = None, dtype: str = "float32",
             device: str = "cpu", progress: bool = True, **kwargs) -> HFEngine:
        """Load a local model folder (+ optional peft adapter) and wrap it.

        `device`: "cpu" (default), "cuda", "cuda:1", "mps" or "auto" (CUDA when available); see `devices`.
        `progress`: transformers' "Loading weights" bar follows the package's rule (`progress.library_bars`):
        off with `progress=False` (`--no-progress`), without a terminal and under CI.
        """
        device = resolve_device(device)  # "auto" -> cuda or cpu; a GPU torch cannot see is a ConfigError
        if not Path(model_path).is_dir():
            raise ConfigError(f"model folder {str(model_path)!r} not found: pass a local transformers model folder "
                              "(config.json, weights, tokenizer files)")
        with library_bars(progress):
            tokenizer = AutoTokenizer.from_pretrained(str(model_path))
            model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=getattr(torch, dtype))
            if adapter:
                from peft import PeftModel

                from adaptrec_prompts.backends.lora import check_adapter

                check_adapter(adapter, model_path)  # only what training writes, trained on this base model
                try:
                    model = PeftModel.from_pretrained(model, str(adapter))
                except (RuntimeError, ValueError, KeyError) as exc:  # e.g. size mismatch: another architecture
                    raise ConfigError(f"--adapter {adapter} does not fit the model {model_path} "
                                      f"({type(exc).__name__}: {str(exc)[:200]}); load it on the model it was "
                                      "trained on") from None
        name = Path(model_path).name + (f"+{Path(adapter).name}" if adapter else "")
        return cls(model.to(device).eval(), tokenizer, name=name, **kwargs)

    # ---- prompts ----
    def render(self, messages: Sequence[dict]) -> str:
        """The prompt text for `messages` (chat template with generation prompt, or plain)."""
        if self.use_chat:
            return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def prompt_ids(self, messages: Sequence[dict]) -> list[int]:
        # A chat template writes its own BOS; a plain prompt gets the tokenizer's special tokens.
        return self.tokenizer(self.render(messages), add_special_tokens=not self.use_chat)["input_ids"]

    # ---- generation ----
    @torch.no_grad()
    def generate(self, batch: Sequence[Sequence[dict]], prefix: str = "",
                 stop: Sequence[str] | None = None) -> list[Generation]:
        """Greedy generation for several conversations at once (left padding).

        `prefix` is appended to every prompt (e.g. a field header); `stop` overrides the engine's stops.
        """
        tok = self.tokenizer
        stops = list(self.stop if stop is None else stop)
        ids = [self.tokenizer(self.render(m) + prefix, add_special_tokens=not self.use_chat)["input_ids"]
               for m in batch]
        width = max(len(x) for x in ids)
        input_ids = torch.tensor([[tok.pad_token_id] * (width - len(x)) + x for x in ids], device=self.device)
        attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=self.device)
        with self._lock:
            out = self.model.generate(input_ids=input_ids, attention_mask=attention, do_sample=False,
                                      max_new_tokens=self.max_new_tokens, stop_strings=stops or None,
                                      tokenizer=tok, pad_token_id=tok.pad_token_id)
        results = []
        for row, prompt in zip(out[:, width:].tolist(), ids, strict=True):
            n = len(row)
            while n and row[n - 1] == tok.pad_token_id:
                n -= 1
            text = tok.decode(row[:n], skip_special_tokens=True)
            for marker in stops:
                if marker in text:
                    text = text[: text.index(marker) + len(marker)]
            results.append(Generation(text=text, prompt_tokens=len(prompt), completion_tokens=n))
        return results

    def complete(self, request) -> Response:
        messages = request_messages(request)
        header = first_field_header(messages) if self.prefill_field else None
        if header:
            gen = self.generate([messages], prefix=header, stop=("\n",))[0]
            gen = Generation(f"{header}{gen.text.strip()}\n\n{END_MARKER}", gen.prompt_tokens, gen.completion_tokens)
        else:
            gen = self.generate([messages])[0]
        return Response(id=None, model=self.name, message=Message.assistant([TextPart(gen.text)]),
                        finish_reason="stop", usage=Usage(input_tokens=gen.prompt_tokens,
                                                          output_tokens=gen.completion_tokens,
                                                          total_tokens=gen.prompt_tokens + gen.completion_tokens))

    def stream(self, request):
        return response_to_events(self.complete(request))

    def close(self) -> None:
        pass

    # ---- scoring ----
    def _completion_ids(self, completions: Sequence[str]) -> list[list[int]]:
        ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
        if any(not x for x in ids):
            raise ConfigError("cannot score an empty completion")
        return ids

    def score(self, messages: Sequence[dict], completions: Sequence[str]) -> list[float]:
        """Sum of log p(completion tokens | prompt) for each completion (see `score_with_usage`)."""
        return self.score_with_usage(messages, completions)[0]

    @torch.no_grad()
    def score_with_usage(self, messages: Sequence[dict], completions: Sequence[str]) -> tuple[list[float], int, int]:
        """(scores, prompt tokens, completion tokens): log p(completion | prompt) with one shared prefill.

        The prompt, extended by the completions' common token prefix (e.g. the answer field's header),
        is run once; the prefix's log-probability is added to every score, so scores stay exact. The
        completions' remaining tokens then run in one forward pass over that cache: as one flat sequence
        with a tree-shaped 4D mask (no cache copies), or, for sliding-window caches, as a batch over the
        cache repeated K times. The first distinct token's log-probability comes from the prefill.
        """
        prompt = self.prompt_ids(messages)
        full = self._completion_ids(completions)
        shared = 0
        while shared < min(len(c) for c in full) - 1 and len({c[shared] for c in full}) == 1:
            shared += 1
        context, comps = prompt + full[0][:shared], [c[shared:] for c in full]
        with self._lock:
            out = self.model(input_ids=torch.tensor([context], device=self.device), use_cache=True,
                             logits_to_keep=shared + 1)
            logp0 = torch.log_softmax(out.logits[0].float(), dim=-1)  # (S + 1, V)
            constant = sum(logp0[i, full[0][i]].item() for i in range(shared))
            scores = [constant + logp0[-1, c[0]].item() for c in comps]
            usage = (len(prompt), sum(len(c) for c in full))
            if max(len(c) for c in comps) == 1:
                return scores, *usage
            # `out.cache`, not `out.past_key_values`: transformers 5 renamed the output field, and reading
            # the old name logs a deprecation warning on every first use
            if getattr(self.model.config, "sliding_window", None):
                logits = self._score_batch(out.cache, context, comps)  # (K, L-1, V)
                for j, c in enumerate(comps):
                    if len(c) > 1:
                        logp = torch.log_softmax(logits[j, : len(c) - 1].float(), dim=-1)
                        scores[j] += logp.gather(1, torch.tensor(c[1:], device=self.device)[:, None]).sum().item()
            else:
                logits = self._score_tree(out.cache, context, comps)  # (T, V), T = sum(L - 1)
                logp = torch.log_softmax(logits.float(), dim=-1)
                row = 0
                for j, c in enumerate(comps):
                    targets = torch.tensor(c[1:], dtype=torch.long, device=self.device)
                    scores[j] += logp[row : row + len(targets)].gather(1, targets[:, None]).sum().item()
                    row += len(targets)
        return scores, *usage

    def _score_tree(self, cache, context: list[int], comps: list[list[int]]) -> torch.Tensor:
        """All completions as one sequence over the shared cache, each attending to the context and to its
        own earlier tokens only (a 4D mask): no copy of the cache per candidate. Returns (T, V) logits."""
        fed = [tok for c in comps for tok in c[:-1]]
        dev = self.device
        owner = torch.tensor([j for j, c in enumerate(comps) for _ in c[:-1]], device=dev)
        positions = torch.tensor([len(context) + i for c in comps for i in range(len(c) - 1)], device=dev)
        n, p = len(fed), len(context)
        allowed = (owner[:, None] == owner[None, :]) & torch.ones(n, n, dtype=torch.bool, device=dev).tril()
        mask = torch.zeros(1, 1, n, p + n, dtype=self.model.dtype, device=dev)
        mask[0, 0, :, p:] = torch.where(allowed, 0.0, torch.finfo(self.model.dtype).min)
        return self.model(input_ids=torch.tensor([fed], device=dev), attention_mask=mask, position_ids=positions[None],
                          cache=cache, use_cache=True).logits[0]

    def _score_batch(self, cache, context: list[int], comps: list[list[int]]) -> torch.Tensor:
        """Completions as a right-padded batch over the cache repeated K times (for sliding-window caches,
        which a flat 4D mask would bypass). Returns (K, L-1, V) logits."""
        k, width = len(comps), max(len(c) for c in comps)
        cache.batch_repeat_interleave(k)
        pad = self.tokenizer.pad_token_id
        dev = self.device
        fed = torch.tensor([c[:-1] + [pad] * (width - len(c)) for c in comps], device=dev)
        mask = torch.tensor([[1] * len(context) + [1] * (len(c) - 1) + [0] * (width - len(c)) for c in comps],
                            device=dev)
        positions = torch.arange(len(context), len(context) + width - 1, device=dev).expand(k, -1)
        return self.model(input_ids=fed, attention_mask=mask, position_ids=positions, cache=cache,
                          use_cache=True).logits

    @torch.no_grad()
    def score_separately(self, messages: Sequence[dict], completions: Sequence[str]) -> list[float]:
        """Reference for `score`: one full forward pass per completion (K times the work)."""
        prompt = self.prompt_ids(messages)
        scores = []
        for c in self._completion_ids(completions):
            logits = self.model(input_ids=torch.tensor([prompt + c], device=self.device)).logits[0]
            logp = torch.log_softmax(logits[len(prompt) - 1 : -1].float(), dim=-1)
            scores.append(logp.gather(1, torch.tensor(c, device=self.device)[:, None]).sum().item())
        return scores


def hf_lm(model_path: str | Path, adapter: str | Path | None = None, **kwargs) -> dspy.LM:
    """`dspy.LM` over an `HFEngine` (DSPy's response cache off: the model is local and deterministic)."""
    engine = HFEngine.load(model_path, adapter=adapter, **kwargs)
    return dspy.LM(f"local/{engine.name}", engine=engine, cache=False, temperature=0.0,
                   max_tokens=engine.max_new_tokens)
