"""`adaptrec bench modes`: wall time per recommendation, generate vs score mode, same prompt.

A ~25M-parameter Llama is built locally (tokenizer trained on rendered prompts of the training split,
random weights: speed does not depend on what the weights know). Generation is given the tokens a
trained model needs to write "[[ ## answer ## ]]\\n<number>. <title>\\n\\n[[ ## completed ## ]]"
(`--max-new-tokens`, default 32); a random model never stops early, so every example uses all of them.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import dspy
import torch

from adaptrec_prompts.backends.hf import hf_lm
from adaptrec_prompts.backends.tiny import build_tiny_llama, prompt_corpus
from adaptrec_prompts.data.prepare import load_manifest, load_prepared
from adaptrec_prompts.data.render import manifest_template
from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.programs.adaptrec import AdaptRec, example_inputs
from adaptrec_prompts.programs.chat_adapters import eval_adapter
from adaptrec_prompts.programs.recommender import NextItemRecommender, answer_block


def run(data_dir: str | Path, examples: int = 10, m_select: int = 5, max_new_tokens: int = 32,
        size: str = "25m", model_dir: str | Path | None = None, separate_examples: int = 3,
        device: str = "cpu") -> dict:
    """Time both modes on `examples` test rows (`device`: where the model runs; on a GPU every timed
    step waits for the GPU to finish, so the times are the work, not its launch)."""
    ddict = load_prepared(data_dir)
    if "neighbor_example_ids" not in ddict["test"].column_names:
        raise ConfigError(f"{data_dir} has no neighbour columns: run `adaptrec index neighbors` first")
    template = manifest_template(load_manifest(data_dir))
    model_dir = Path(model_dir or tempfile.mkdtemp(prefix="bench-modes-"))
    if not (model_dir / "config.json").is_file():
        build_tiny_llama(prompt_corpus(ddict["train"].select(range(2000)), template), model_dir, size=size,
                         vocab_size=8000)
    lm = hf_lm(model_dir, max_new_tokens=max_new_tokens, device=device, progress=False)
    engine = lm.engine
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)
    params = sum(p.numel() for p in engine.model.parameters())
    rows = [example_inputs(r) for r in ddict["test"].select(range(examples))]
    timings: dict[str, list[float]] = {"generate": [], "score": []}
    tokens = []
    for mode in ("generate", "score"):
        program = AdaptRec(template, selection="static", n_retrieve=10, m_select=m_select, mode=mode)
        with dspy.context(lm=lm):
            program(**rows[0])  # warm-up
            for inputs in rows:
                sync()
                started = time.perf_counter()
                program(**inputs)
                sync()
                timings[mode].append(time.perf_counter() - started)
    rec, adapter = NextItemRecommender(template), eval_adapter()
    prefill, separate = [], []
    for n, inputs in enumerate(rows):
        msgs = adapter.format(rec.recommend.signature, [], rec.inputs(
            inputs["history_titles"], inputs["candidate_titles"], inputs["neighbors"][:m_select]))
        ids = engine.prompt_ids(msgs)
        tokens.append(len(ids))
        sync()
        started = time.perf_counter()
        with torch.no_grad():
            engine.model(input_ids=torch.tensor([ids], device=engine.device), logits_to_keep=1)
        sync()
        prefill.append(time.perf_counter() - started)
        if n < separate_examples:  # the reference score mode replaces: K full passes
            comps = [answer_block(adapter.format_assistant_message_content(rec.recommend.signature, {
                "answer": rec.answer_text(i, t)})) for i, t in enumerate(inputs["candidate_titles"], start=1)]
            sync()
            started = time.perf_counter()
            engine.score_separately(msgs, comps)
            sync()
            separate.append(time.perf_counter() - started)
    gen, score = statistics.mean(timings["generate"]), statistics.mean(timings["score"])
    return {"params": params, "examples": examples, "device": str(engine.device), "prompt_tokens": statistics.mean(tokens),
            "generate_s": gen, "score_s": score, "ratio": gen / score, "max_new_tokens": max_new_tokens,
            "k": len(rows[0]["candidate_ids"]), "prefill_s": statistics.mean(prefill),
            "separate_s": statistics.mean(separate) if separate else None, "separate_examples": len(separate)}
