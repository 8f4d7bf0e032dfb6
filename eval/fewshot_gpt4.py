"""The paper's few-shot experiment on an API model: AdaptRec (adaptive selection) vs static top-M vs zero-shot.

    # GPT-4 class model (key from the environment; never written anywhere)
    export OPENAI_API_KEY=...
    python eval/fewshot_gpt4.py --data artifacts/ml-100k-nb --model openai/gpt-4o --limit 100 --out runs/fewshot

    # any OpenAI-compatible server (vLLM, llama.cpp server), no key needed
    python eval/fewshot_gpt4.py --data artifacts/ml-100k-nb --model openai/my-model \
        --api-base http://127.0.0.1:8000/v1 --limit 100 --out runs/fewshot-local

Every variant runs through the shared harness (per-example log, resume, CIs) on the same frozen
examples and neighbours; provider responses are cached on disk (`--cache-dir`; not for a custom server:
DSPy's cache key cannot tell servers apart, so with `--api-base` the run log alone resumes), rate limits (429)
and timeouts are retried with exponential backoff (`--num-retries`, `--timeout`); a run that still has
unscored examples exits 2 and says how to retry. A cost estimate is printed before any
call; `--dry-run` stops there. Paired tests against zero-shot are printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

VARIANTS = {"adaptive": "AdaptRec (LLM selects M of N)", "static": "static top-M", "none": "zero-shot"}


def make_parser() -> argparse.ArgumentParser:
    from adaptrec_prompts.cli.app import positive_int

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="prepared folder with Stage-1 neighbour columns")
    p.add_argument("--split", default="test", choices=["train", "valid", "test", "test_extended"])
    p.add_argument("--model", default="openai/gpt-4o", help="a dspy.LM model name (provider/model)")
    p.add_argument("--api-base", help="OpenAI-compatible server URL; no key needed then")
    p.add_argument("--limit", type=positive_int, default=100, help="first N examples (the paper used ~100 test users)")
    p.add_argument("--variants", default="adaptive,static,none")
    p.add_argument("--mode", default="generate", choices=["generate", "score"],
                   help="Stage 3: the model writes its answer, or all K candidates are ranked by the logprob of "
                        "their label (needs a server that returns logprobs)")
    p.add_argument("--prompt", default="full", choices=["full", "compact"],
                   help="full: DSPy's ChatAdapter; compact: the instructions as the system message, no field "
                        "boilerplate (base models; ~40%% fewer prompt tokens)")
    p.add_argument("--demo-items", type=int, help="show each similar user's last N items only")
    p.add_argument("--labels", default="numbers", choices=["numbers", "letters"],
                   help="candidate labels; score mode on a server whose tokenizer splits digits (Llama, Mistral, "
                        "Gemma) needs letters")
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--m", type=int, default=5)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--num-retries", type=int, default=6, help="retries with exponential backoff (429, timeouts)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--cache-dir", help="response cache folder (default OUT/cache)")
    p.add_argument("--out", required=True)
    p.add_argument("--dry-run", action="store_true", help="print the cost estimate and stop")
    return p


def estimate(rows, variants, model: str, m: int, n: int, template, max_tokens: int) -> tuple[int, int, float | None]:
    """(prompt tokens, completion tokens, USD) before any call. Tokens ~ characters / 4 (no tokenizer download)."""
    from adaptrec_prompts.evaluation.harness import estimate_cost
    from adaptrec_prompts.programs.adaptrec import AdaptRec, example_inputs
    from adaptrec_prompts.programs.chat_adapters import eval_adapter

    adapter, chars, calls = eval_adapter(), 0, 0
    for variant in variants:
        program = AdaptRec(template, selection=variant, n_retrieve=n, m_select=m, mode="generate")
        rec = program.recommender
        for row in rows:
            x = example_inputs(row)
            similar = [] if variant == "none" else x["neighbors"][:m]
            msgs = adapter.format(rec.recommend.signature, rec.recommend.demos,
                                  rec.inputs(x["history_titles"], x["candidate_titles"], similar))
            chars += sum(len(msg["content"]) for msg in msgs)
            calls += 1
            if variant == "adaptive":  # Stage 2 shows the N pool histories
                pool = [h for h, _ in x["neighbors"][:n]]
                sel = program.selector
                msgs = adapter.format(sel.select.signature, sel.select.demos, {
                    "user_history": template.render_history(x["history_titles"]),
                    "candidate_users": template.render_pool(pool), "select_count": m})
                chars += sum(len(msg["content"]) for msg in msgs)
                calls += 1
    prompt_tokens, completion_tokens = chars // 4, calls * max_tokens
    return prompt_tokens, completion_tokens, estimate_cost(model, prompt_tokens, completion_tokens)


def main(args: argparse.Namespace) -> int:
    if not args.api_base and not os.environ.get("OPENAI_API_KEY") and args.model.startswith("openai/"):
        print("error: OPENAI_API_KEY is not set. Export it (it is read from the environment and never written), "
              "or pass --api-base for an OpenAI-compatible server.", file=sys.stderr)
        return 2
    import dspy

    from adaptrec_prompts.backends import api_lm
    from adaptrec_prompts.cli.commands import format_results
    from adaptrec_prompts.data.prepare import load_manifest, load_prepared
    from adaptrec_prompts.data.render import manifest_template
    from adaptrec_prompts.evaluation.harness import evaluate
    from adaptrec_prompts.evaluation.metrics import paired_comparison
    from adaptrec_prompts.evaluation.results import read_log
    from adaptrec_prompts.programs.adaptrec import AdaptRec

    manifest = load_manifest(args.data)
    split = load_prepared(args.data)[args.split]
    rows = split.select(range(min(args.limit, split.num_rows))).to_list()
    if rows and not rows[0].get("neighbor_example_ids"):
        print(f"error: {args.data} has no Stage-1 neighbours; run `adaptrec index neighbors` first", file=sys.stderr)
        return 2
    variants = args.variants.split(",")
    template = manifest_template(manifest)
    prompt_tokens, completion_tokens, usd = estimate(rows, variants, args.model, args.m, args.n, template,
                                                     args.max_tokens)
    print(f"{len(rows)} examples x {variants} on {args.model}: ~{prompt_tokens:,} prompt tokens, "
          f"<= {completion_tokens:,} completion tokens, estimated cost "
          + (f"${usd:.2f}" if usd is not None else "unknown (model not in litellm's price map)"), flush=True)
    if args.dry_run:
        return 0
    out = Path(args.out)
    dspy.configure_cache(enable_disk_cache=True, disk_cache_dir=str(Path(args.cache_dir or out / "cache")))
    lm = api_lm(args.model, api_base=args.api_base, max_tokens=args.max_tokens, num_retries=args.num_retries,
                timeout=args.timeout, cache=True)
    runs, failed = {}, {}
    for variant in variants:
        variant_out = out / variant if (args.mode, args.labels, args.prompt) == ("generate", "numbers", "full") else \
            out / f"{variant}-{args.mode}-{args.labels}-{args.prompt}"
        program = AdaptRec(template, selection=variant, n_retrieve=args.n, m_select=args.m, mode=args.mode,
                           labels=args.labels, prompt=args.prompt, demo_items=args.demo_items)
        config = {"script": "eval/fewshot_gpt4.py", "data": args.data, "data_hash": manifest.get("data_hash"),
                  "split": args.split, "limit": args.limit, "program": variant, "lm": args.model,
                  "api_base": args.api_base, "max_tokens": args.max_tokens,
                  "timeout": args.timeout, "num_retries": args.num_retries, "threads": args.threads}
        # prompt settings beyond the defaults only: a run folder written before they existed still resumes
        config.update({k: v for k, v in (("mode", args.mode), ("labels", args.labels), ("prompt", args.prompt),
                                         ("demo_items", args.demo_items))
                       if v != {"mode": "generate", "labels": "numbers", "prompt": "full"}.get(k)})
        results = evaluate(program, rows, variant_out, config, lm=lm, threads=args.threads,
                           data_manifest=manifest)
        runs[variant] = variant_out
        if results["errors"]:
            failed[variant] = results["errors"]
        print(f"{VARIANTS.get(variant, variant)}: " + format_results(str(variant_out), results))
        print(f"  tokens: prompt {results['prompt_tokens']:,}, completion {results['completion_tokens']:,}, "
              f"cost {results['cost_usd']}")
    if "none" in runs:
        base = list(read_log(runs["none"] / "predictions.jsonl").values())
        for variant, path in runs.items():
            if variant != "none":
                res = paired_comparison(base, list(read_log(path / "predictions.jsonl").values()))
                print(f"{variant} vs zero-shot: " + json.dumps(res["HR@1"]))
    if failed:
        print(f"error: provider/transport errors left examples unscored ({failed}); run the same command again to "
              "retry them (finished examples are kept)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(make_parser().parse_args()))
