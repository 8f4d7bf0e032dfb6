"""The `adaptrec` command line. Subcommands grow with the stages; each prints what it did."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from adaptrec_prompts.errors import AdaptRecError


def _cmd_prepare(args: argparse.Namespace) -> None:
    from adaptrec_prompts.data.download import download
    from adaptrec_prompts.prepare import build, save
    from adaptrec_prompts.protocol import ProtocolConfig

    config = ProtocolConfig(
        history_len=args.history_len, min_history=args.min_history, k_candidates=args.k_candidates,
        seed=args.seed, extended_seeds=args.extended_seeds,
    )
    raw_dir = args.raw_dir or download(args.dataset, args.cache_dir)
    ddict, titles, manifest = build(args.dataset, raw_dir, config, items_file=args.items_file, domain=args.domain)
    out = save(ddict, titles, manifest, args.out, overwrite=args.overwrite)
    counts = ", ".join(f"{s}={n}" for s, n in manifest["counts"]["examples"].items())
    print(f"wrote {out} ({args.dataset}, seed {args.seed}): {counts}")


def _cmd_stats(args: argparse.Namespace) -> None:
    from adaptrec_prompts.prepare import stats

    info = stats(args.dir)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"dataset {info['dataset']}: {info['items']} items")
    print(f"{'split':<14}{'users':>8}{'examples':>10}  history length: examples")
    for split, s in info["splits"].items():
        hist = " ".join(f"{k}:{v}" for k, v in s["history_length"].items())
        print(f"{split:<14}{s['users']:>8}{s['examples']:>10}  {hist}")


def _cmd_download(args: argparse.Namespace) -> None:
    from adaptrec_prompts.data.download import download

    print(download(args.dataset, args.cache_dir))


def _cmd_compare_llara(args: argparse.Namespace) -> None:
    from adaptrec_prompts.data.fidelity import compare_llara_movielens

    print(f"$ adaptrec data compare-llara --raw-dir {args.raw_dir} --llara-dir {args.llara_dir}")
    print(f"{'split':<8}{'rows':>6}{'matched':>9}{'same split':>12}{'exact row':>11}{'target at last ts':>19}{'any tie order':>15}")
    for split, c in compare_llara_movielens(args.raw_dir, args.llara_dir).items():
        print(f"{split:<8}{c['rows']:>6}{c['matched_one_user']:>9}{c['user_in_same_split']:>12}"
              f"{c['exact_row']:>11}{c['target_at_last_timestamp']:>19}{c['consistent_any_tie_order']:>15}")


def _index_parts(args: argparse.Namespace):
    from adaptrec_prompts.neighbors import make_embedder, open_index
    from adaptrec_prompts.retriever import make_client

    embedder = make_embedder(args.embedder, args.data, args.embed_model)
    client = make_client(path=None if args.chroma_url else args.chroma_path, url=args.chroma_url)
    hnsw = {"ef_search": args.ef_search, "ef_construction": args.ef_construction, "max_neighbors": args.max_neighbors}
    return embedder, open_index(args.data, embedder, client, hnsw=hnsw)


def _cmd_index_build(args: argparse.Namespace) -> None:
    embedder, index = _index_parts(args)
    print(f"collection {index.name}: {index.count()} training examples, embedder {embedder.id}")


def _cmd_index_neighbors(args: argparse.Namespace) -> None:
    from adaptrec_prompts.neighbors import add_neighbors

    embedder, index = _index_parts(args)
    section = add_neighbors(args.data, args.out, index, embedder, n=args.n, splits=args.splits.split(","),
                            overfetch=args.overfetch, overwrite=args.overwrite)
    print(f"wrote {args.out}: top-{args.n} neighbours from {index.name}")
    for split, st in section["splits"].items():
        print(f"  {split:<14} queries={st['queries']} refetched={st['refetched']} short={st['short']} "
              f"excluded_same_user={st['excluded']['same_user']} "
              f"excluded_not_before={st['excluded']['not_before_query_time']} seconds={st['seconds']}")


def _cmd_bench_retrieval(args: argparse.Namespace) -> None:
    from adaptrec_prompts.benchmarks.retrieval import coverage, measure
    from adaptrec_prompts.embed import CollabEmbedder, training_sequences
    from adaptrec_prompts.prepare import load_prepared
    from adaptrec_prompts.schema import column

    print("$ adaptrec bench retrieval " + " ".join(sys.argv[3:]))
    pools = []
    for size in filter(None, args.sizes.split(",")):
        n = int(float(size.lower().replace("k", "e3").replace("m", "e6")))
        pools.append((f"synthetic {size}", ("synthetic", n, 0), ("synthetic", args.queries, 1)))
    for folder in args.data or []:
        ddict = load_prepared(folder)
        emb = CollabEmbedder().fit(training_sequences(ddict["train"]))
        queries = emb.embed(column(ddict["test_extended"], "history_item_ids")[: args.queries])
        pools.append((f"{folder} collab", emb.embed(column(ddict["train"], "history_item_ids")), queries))
    hnsw = {"ef_search": args.ef_search, "ef_construction": args.ef_construction, "max_neighbors": args.max_neighbors}
    print(f"N={args.n}, {args.queries} queries; HNSW {hnsw}; exact = numpy brute force (float32 matmul)")
    header = f"{'pool':<28}{'size':>9} {'method':<7}{'build seq/s':>12}{'single ms/q':>12}{'batched ms/q':>13}"
    print(header + f"{'recall@N':>10}{'disk MB':>9}{'peak RSS MB':>12}")
    for name, pool, queries in pools:
        for method in ("chroma", "exact"):
            r = measure(method, pool, queries, n=args.n, hnsw=hnsw)
            build = "-" if method == "exact" else f"{r['build_per_s']:,.0f}"
            print(f"{name:<28}{r['pool']:>9} {method:<7}{build:>12}{r['single_ms']:>12.3f}{r['batched_ms']:>13.3f}"
                  f"{r['recall']:>10.3f}{r['disk_mb']:>9.1f}{r['peak_rss_mb']:>12.0f}", flush=True)
    for folder in args.data or []:
        cov = coverage(folder, n=args.n)
        for name, c in cov.items():
            print(f"coverage@{args.n} {folder} valid ({c['n_queries']} queries), {name:<7}: target among neighbours' "
                  f"next items {c['next_item']:.3f}, among their histories {c['history']:.3f}")


def _cmd_bench_modes(args: argparse.Namespace) -> None:
    from adaptrec_prompts.benchmarks.modes import run

    print("$ adaptrec bench modes " + " ".join(sys.argv[3:]))
    r = run(args.data, examples=args.examples, m_select=args.m, max_new_tokens=args.max_new_tokens,
            model_dir=args.model_dir)
    print(f"model: locally built Llama, {r['params'] / 1e6:.1f}M parameters, fp32, "
          f"{__import__('torch').get_num_threads()} torch threads")
    print(f"{r['examples']} test examples, static selection M={args.m}, K={r['k']}, "
          f"prompt tokens per recommendation: {r['prompt_tokens']:.0f}")
    print(f"generate mode ({r['max_new_tokens']} new tokens): {r['generate_s']:.3f} s/recommendation")
    print(f"score mode (one prefill + K candidates): {r['score_s']:.3f} s/recommendation")
    print(f"generate/score time ratio: {r['ratio']:.1f}x")
    print(f"prompt prefill alone (shared by both modes): {r['prefill_s']:.3f} s")
    if r["separate_s"] is not None:
        print(f"K separate full passes (what score mode replaces; {r['separate_examples']} examples): "
              f"{r['separate_s']:.3f} s/recommendation, {r['separate_s'] / r['score_s']:.1f}x the score mode")


def _cmd_prompt(args: argparse.Namespace) -> None:
    import dspy

    from adaptrec_prompts.modules import AdaptRec, eval_adapter, example_inputs
    from adaptrec_prompts.prepare import load_manifest, load_prepared
    from adaptrec_prompts.render import load_template, manifest_template

    row = load_prepared(args.data)[args.split][args.index]
    template = load_template(args.template) if args.template else manifest_template(load_manifest(args.data))
    program = AdaptRec(template, selection=args.selection, n_retrieve=args.n, m_select=args.m)
    inputs = example_inputs(row)
    if args.selection == "adaptive":
        raise SystemExit("error: --selection adaptive needs an LM; show static/random/none prompts")
    pool = inputs["neighbors"][: args.n]
    if args.selection == "random":
        from adaptrec_prompts.protocol import example_rng

        picked = example_rng(0, "random-selection", row["example_id"]).choice(len(pool), size=args.m, replace=False)
        similar = [pool[i] for i in sorted(picked.tolist())]
    else:
        similar = pool[: args.m] if args.selection == "static" else []
    rec = program.recommender
    messages = eval_adapter().format(rec.recommend.signature, demos=rec.recommend.demos,
                                     inputs=rec.inputs(inputs["history_titles"], inputs["candidate_titles"], similar))
    print(f"<!-- adaptrec prompt --data {args.data} --split {args.split} --index {args.index} "
          f"--selection {args.selection} --m {args.m} (dspy {dspy.__version__}, ChatAdapter) -->")
    for message in messages:
        print(f"### {message['role']}\n\n```text\n{message['content']}\n```\n")
    print(f"Target: {row['target_title']} (candidate {row['candidate_item_ids'].index(row['target_item_id']) + 1})")


PROGRAM_CHOICES = "none|random|static|adaptive (AdaptRec selection), baseline:random|popularity|userknn|sasrec, or a .json"


def build_program(spec: str, data_dir: str, *, n: int = 10, m: int = 5, mode: str = "score", seed: int = 0,
                  template: str | None = None, mode_given: bool = True):
    """A program (AdaptRec variant, saved program or baseline) from a command-line spec."""
    from adaptrec_prompts.embed import training_sequences
    from adaptrec_prompts.errors import ConfigError
    from adaptrec_prompts.modules import SELECTIONS, AdaptRec, load_program
    from adaptrec_prompts.prepare import load_manifest, load_prepared
    from adaptrec_prompts.render import load_template, manifest_template

    if spec in SELECTIONS:
        tmpl = load_template(template) if template else manifest_template(load_manifest(data_dir))
        return AdaptRec(tmpl, selection=spec, n_retrieve=n, m_select=m, mode=mode, seed=seed)
    if spec.endswith(".json"):
        return load_program(spec, **({"mode": mode} if mode_given else {}))
    name = spec.removeprefix("baseline:")
    train = load_prepared(data_dir)["train"]
    if name == "random":
        from adaptrec_prompts.baselines import RandomBaseline

        return RandomBaseline(seed)
    if name in ("popularity", "userknn"):
        from adaptrec_prompts.baselines import PopularityBaseline, UserKNNBaseline

        seqs = training_sequences(train)
        return PopularityBaseline(seqs) if name == "popularity" else UserKNNBaseline(seqs, n_retrieve=n)
    if name == "sasrec":
        from adaptrec_prompts.baselines.sasrec import SASRecBaseline

        return SASRecBaseline(train, seed=seed)
    raise ConfigError(f"unknown program {spec!r}; use {PROGRAM_CHOICES}")


def _cmd_eval(args: argparse.Namespace) -> None:
    from adaptrec_prompts.backends import make_lm
    from adaptrec_prompts.errors import ConfigError
    from adaptrec_prompts.evaluation import evaluate
    from adaptrec_prompts.modules import AdaptRec
    from adaptrec_prompts.prepare import load_manifest, load_prepared

    manifest = load_manifest(args.data)
    split = load_prepared(args.data)[args.split]
    if args.limit:
        split = split.select(range(min(args.limit, split.num_rows)))
    program = build_program(args.program, args.data, n=args.n, m=args.m, mode=args.mode or "score", seed=args.seed,
                            template=args.template, mode_given=args.mode is not None)
    lm = None
    if isinstance(program, AdaptRec):
        if not args.lm:
            raise ConfigError("this program needs an LM: pass --lm hf:PATH (local) or e.g. --lm openai/gpt-4o")
        lm = make_lm(args.lm, adapter=args.adapter, api_base=args.api_base,
                     **({"max_new_tokens": args.max_new_tokens} if is_local(args.lm) else
                        {"max_tokens": args.max_new_tokens}))
    config = {"data": str(args.data), "data_hash": manifest.get("data_hash"), "split": args.split,
              "limit": args.limit, "examples": split.num_rows, "program": args.program,
              "program_config": program.config(), "lm": args.lm, "adapter": args.adapter, "api_base": args.api_base,
              "max_new_tokens": args.max_new_tokens, "seed": args.seed}
    results = evaluate(program, split.to_list(), args.out, config, lm=lm, threads=args.threads,
                       progress=not args.no_progress, data_manifest=manifest)
    print(format_results(args.out, results))


def is_local(spec: str) -> bool:
    return spec.startswith("hf:") or spec == "gemma-3-270m"


def format_results(name: str, results: dict) -> str:
    parts = [f"{name}: n={results['n']} errors={results['errors']}"]
    for key, m in results["metrics"].items():
        parts.append(f"{key}={m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]")
    if results.get("overhead_share") is not None:
        parts.append(f"overhead={100 * results['overhead_share']:.1f}% of {results['total_seconds']:.1f}s")
    return " ".join(parts)


def _cmd_compare(args: argparse.Namespace) -> None:
    from adaptrec_prompts.evaluation import read_log
    from adaptrec_prompts.metrics import paired_comparison

    a = list(read_log(Path(args.a) / "predictions.jsonl").values())
    b = list(read_log(Path(args.b) / "predictions.jsonl").values())
    res = paired_comparison(a, b)
    print(f"$ adaptrec compare {args.a} {args.b}")
    print(f"{res['n']} shared examples (only in A: {res['only_in_a']}, only in B: {res['only_in_b']})")
    for key in ("HR@1", "NDCG@5"):
        r = res[key]
        print(f"{key}: A={r['a']:.3f} B={r['b']:.3f} B-A={r['diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] "
              f"{r['test']} p={r['p_value']:.4f}" + (f" discordant A-only/B-only={r['discordant']}"
                                                    if "discordant" in r else ""))


def _cmd_tiny_model(args: argparse.Namespace) -> None:
    from adaptrec_prompts.backends.tiny import build_tiny_llama
    from adaptrec_prompts.benchmarks.modes import prompt_texts
    from adaptrec_prompts.prepare import load_manifest, load_prepared
    from adaptrec_prompts.render import manifest_template

    train = load_prepared(args.data)["train"]
    texts = prompt_texts(train.select(range(min(args.texts, train.num_rows))), manifest_template(
        load_manifest(args.data)))
    out = build_tiny_llama(texts, args.out, size=args.size, vocab_size=args.vocab_size, chat_template=args.chat,
                           seed=args.seed)
    print(f"wrote {out} (random {args.size} Llama, tokenizer trained on {len(texts)} rendered training prompts)")


def _cmd_compile(args: argparse.Namespace) -> None:
    import json

    from adaptrec_prompts.backends import make_lm
    from adaptrec_prompts.errors import ConfigError
    from adaptrec_prompts.evaluation import _sha, estimate_cost, evaluate, program_state
    from adaptrec_prompts.modules import AdaptRec, save_program
    from adaptrec_prompts.optimize import call_budget, compile_program, to_examples
    from adaptrec_prompts.prepare import load_manifest, load_prepared

    manifest = load_manifest(args.data)
    ddict = load_prepared(args.data)
    program = build_program(args.program, args.data, n=args.n, m=args.m, mode=args.mode or "score",
                            template=args.template, mode_given=args.mode is not None)
    if not isinstance(program, AdaptRec):
        raise ConfigError("compile needs an AdaptRec program (none|random|static|adaptive or a saved .json)")
    # keep_in_memory: never write a cache file into the prepared (frozen) folder
    train = ddict["train"].shuffle(seed=args.seed, keep_in_memory=True).select(
        range(min(args.train_size, ddict["train"].num_rows)))
    valid = ddict["valid"].select(range(min(args.val_size, ddict["valid"].num_rows)))
    lm_kwargs = {"max_new_tokens": args.max_new_tokens} if is_local(args.lm) else {}
    lm = make_lm(args.lm, adapter=args.adapter, api_base=args.api_base, **lm_kwargs)
    prompt_lm = make_lm(args.prompt_lm, api_base=args.api_base) if args.prompt_lm else lm
    stages = 2 if program.selection == "adaptive" else 1
    calls = call_budget(args.optimizer, stages, train.num_rows, valid.num_rows, args.num_trials, args.num_candidates)
    cost = estimate_cost(args.lm, calls * 1500, calls * 30)
    print(f"$ adaptrec compile {' '.join(sys.argv[2:])}")
    print(f"budget: optimizer={args.optimizer} metric={args.metric} trials={args.num_trials} "
          f"candidates={args.num_candidates} max_demos={args.max_demos} train={train.num_rows} val={valid.num_rows}; "
          f"<= {calls} LM calls" + (f", ~${cost:.2f} at ~1,500 prompt tokens/call" if cost is not None else ""),
          flush=True)
    base_state = program_state(program)
    name = args.name or f"{args.program}-{args.optimizer}"
    out_json = Path(args.programs_dir) / manifest["dataset"] / f"{name}.json"
    runs = Path(args.runs_dir) / manifest["dataset"] / name
    run_cfg = {"data": args.data, "data_hash": manifest.get("data_hash"), "split": "valid", "lm": args.lm,
               "examples": valid.num_rows, "purpose": "compile validation"}
    rows = valid.to_list()
    before = evaluate(program, rows, runs / "before", {**run_cfg, "program": "base"}, lm=lm, progress=False,
                      data_manifest=manifest)
    with dspy_context(lm):
        compiled = compile_program(program, to_examples(train), to_examples(valid), args.optimizer, args.metric,
                                   num_trials=args.num_trials, num_candidates=args.num_candidates,
                                   max_demos=args.max_demos, prompt_lm=prompt_lm, seed=args.seed)
    save_program(compiled, out_json)
    after = evaluate(compiled, rows, runs / "after", {**run_cfg, "program": str(out_json)}, lm=lm, progress=False,
                     data_manifest=manifest)
    record = {"optimizer": args.optimizer, "metric": args.metric,
              "budget": {"num_trials": args.num_trials, "num_candidates": args.num_candidates,
                         "max_demos": args.max_demos, "train_size": train.num_rows, "val_size": valid.num_rows,
                         "lm_calls_upper_bound": calls},
              "base_program_hash": _sha(base_state), "program_hash": _sha(program_state(compiled)),
              "lm": args.lm, "prompt_lm": args.prompt_lm or args.lm, "data_hash": manifest.get("data_hash"),
              "validation": {"before": before["metrics"], "after": after["metrics"], "n": after["n"]},
              "runs": {"before": str(runs / "before"), "after": str(runs / "after")}}
    out_json.with_suffix(".manifest.json").write_text(json.dumps(record, indent=2) + "\n")
    print(format_results("validation before", before))
    print(format_results("validation after ", after))
    print(f"saved {out_json} (+ .manifest.json); evaluate it with: adaptrec eval --program {out_json} ...")


def dspy_context(lm):
    import dspy

    from adaptrec_prompts.modules import eval_adapter

    return dspy.context(lm=lm, adapter=eval_adapter())


def _cmd_programs_diff(args: argparse.Namespace) -> None:
    from adaptrec_prompts.optimize import diff_programs

    print(diff_programs(args.a, args.b))


def _add_index_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="a prepared folder (adaptrec data prepare)")
    p.add_argument("--embedder", default="collab", help="collab (default), lm or text")
    p.add_argument("--embed-model", help="local model folder for the lm/text embedders")
    p.add_argument("--chroma-path", default="artifacts/chroma", help="embedded Chroma folder (default)")
    p.add_argument("--chroma-url", help="a Chroma server, e.g. http://127.0.0.1:8000 (`chroma run`)")
    p.add_argument("--ef-search", type=int, default=400)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--max-neighbors", type=int, default=32)


def make_parser() -> argparse.ArgumentParser:
    from adaptrec_prompts.data import DATASET_NAMES

    parser = argparse.ArgumentParser(prog="adaptrec", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    groups = parser.add_subparsers(dest="group", required=True)

    data = groups.add_parser("data", help="datasets: download, prepare frozen splits, stats").add_subparsers(
        dest="command", required=True)
    prep = data.add_parser("prepare", help="raw files -> frozen example splits (DatasetDict + manifest)")
    prep.add_argument("--dataset", required=True, help=f"one of: {', '.join(DATASET_NAMES)}")
    prep.add_argument("--raw-dir", help="folder with the raw files (default: download into --cache-dir)")
    prep.add_argument("--items-file", help="llara only: titles file when --raw-dir has none (ml-100k u.item)")
    prep.add_argument("--domain", help="template domain to record (movies, music, books); default from dataset")
    prep.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    prep.add_argument("--seed", type=int, default=0, help="candidate-sampling seed (default 0)")
    prep.add_argument("--k-candidates", type=int, default=20)
    prep.add_argument("--history-len", type=int, default=10)
    prep.add_argument("--min-history", type=int, default=3)
    prep.add_argument("--extended-seeds", type=int, default=1, help="candidate seeds in test_extended")
    prep.add_argument("--cache-dir", default="artifacts/raw", help="where downloads are kept")
    prep.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    prep.set_defaults(func=_cmd_prepare)

    st = data.add_parser("stats", help="users, items, examples per split, history-length histogram")
    st.add_argument("dir")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_cmd_stats)

    dl = data.add_parser("download", help="fetch an official archive (needs a network)")
    dl.add_argument("--dataset", required=True, choices=["ml-100k", "lastfm"])
    dl.add_argument("--cache-dir", default="artifacts/raw")
    dl.set_defaults(func=_cmd_download)

    cmp_ = data.add_parser("compare-llara", help="how many LLaRA MovieLens rows our raw protocol reproduces")
    cmp_.add_argument("--raw-dir", required=True, help="ml-100k raw folder")
    cmp_.add_argument("--llara-dir", required=True, help="LLaRA data/ref/movielens folder")
    cmp_.set_defaults(func=_cmd_compare_llara)

    index = groups.add_parser("index", help="Stage 1: Chroma user index and persisted neighbours").add_subparsers(
        dest="command", required=True)
    build = index.add_parser("build", help="embed the training pool and index it in Chroma (idempotent)")
    _add_index_options(build)
    build.set_defaults(func=_cmd_index_build)
    nb = index.add_parser("neighbors", help="write a copy of --data with top-N neighbour columns on every split")
    _add_index_options(nb)
    nb.add_argument("--out", required=True)
    nb.add_argument("--n", type=int, default=10, help="neighbours per example (1..50; the paper's N is 10)")
    nb.add_argument("--splits", default="train,valid,test,test_extended", help="comma-separated splits to query")
    nb.add_argument("--overfetch", type=int, default=3, help="fetch n*overfetch+10 before exclusions")
    nb.add_argument("--overwrite", action="store_true")
    nb.set_defaults(func=_cmd_index_neighbors)

    bench = groups.add_parser("bench", help="benchmarks that print measured numbers").add_subparsers(
        dest="command", required=True)
    br = bench.add_parser("retrieval", help="Chroma vs exact search speed/recall; Stage-1 coverage")
    br.add_argument("--sizes", default="10k,100k", help="synthetic pool sizes, e.g. 10k,100k,1M")
    br.add_argument("--data", action="append", help="prepared folder(s) for real collab embeddings (repeatable)")
    br.add_argument("--n", type=int, default=10)
    br.add_argument("--queries", type=int, default=1000)
    br.add_argument("--ef-search", type=int, default=400)
    br.add_argument("--ef-construction", type=int, default=200)
    br.add_argument("--max-neighbors", type=int, default=32)
    br.set_defaults(func=_cmd_bench_retrieval)
    bm = bench.add_parser("modes", help="generate vs score mode wall time on a locally built ~25M Llama")
    bm.add_argument("--data", required=True, help="a prepared folder with neighbour columns")
    bm.add_argument("--examples", type=int, default=10)
    bm.add_argument("--m", type=int, default=5)
    bm.add_argument("--max-new-tokens", type=int, default=32)
    bm.add_argument("--model-dir", help="reuse/keep the built model here")
    bm.set_defaults(func=_cmd_bench_modes)

    pr = groups.add_parser("prompt", help="print the exact Stage-3 messages DSPy sends for one example")
    pr.add_argument("--data", required=True)
    pr.add_argument("--split", default="test")
    pr.add_argument("--index", type=int, default=0)
    pr.add_argument("--selection", default="static", choices=["none", "random", "static"])
    pr.add_argument("--n", type=int, default=10)
    pr.add_argument("--m", type=int, default=5)
    pr.add_argument("--template", help="domain name or .toml path (default: the folder's domain)")
    pr.set_defaults(func=_cmd_prompt)

    ev = groups.add_parser("eval", help="score a program or baseline on a frozen split (resumable)")
    ev.add_argument("--data", required=True, help="prepared folder (with neighbour columns for AdaptRec variants)")
    ev.add_argument("--split", default="test")
    ev.add_argument("--program", default="static", help=PROGRAM_CHOICES)
    ev.add_argument("--lm", help="hf:PATH for a local model, or a provider/model for dspy.LM (e.g. openai/gpt-4o)")
    ev.add_argument("--adapter", help="peft LoRA adapter folder for hf: models")
    ev.add_argument("--api-base", help="OpenAI-compatible server URL (vLLM, llama.cpp)")
    ev.add_argument("--mode", choices=["generate", "score"], help="Stage-3 mode (default score)")
    ev.add_argument("--n", type=int, default=10, help="n_retrieve (N)")
    ev.add_argument("--m", type=int, default=5, help="m_select (M)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--limit", type=int, help="first N examples of the split")
    ev.add_argument("--threads", type=int, default=1, help="parallel examples (API backends)")
    ev.add_argument("--max-new-tokens", type=int, default=64)
    ev.add_argument("--template", help="domain name or .toml path (default: the data's domain)")
    ev.add_argument("--out", required=True, help="run folder: results.json, manifest.json, predictions.jsonl")
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(func=_cmd_eval)

    cmp2 = groups.add_parser("compare", help="paired comparison of two runs on the same examples")
    cmp2.add_argument("a")
    cmp2.add_argument("b")
    cmp2.set_defaults(func=_cmd_compare)

    model = groups.add_parser("model", help="local models").add_subparsers(dest="command", required=True)
    tiny = model.add_parser("tiny", help="build a random tiny Llama + a tokenizer trained on the data (offline)")
    tiny.add_argument("--data", required=True)
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--size", default="micro", choices=["micro", "small", "25m"])
    tiny.add_argument("--vocab-size", type=int, default=4000)
    tiny.add_argument("--texts", type=int, default=2000, help="training prompts used to train the tokenizer")
    tiny.add_argument("--chat", action="store_true", help="give the tokenizer a chat template")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_cmd_tiny_model)

    comp = groups.add_parser("compile", help="compile an AdaptRec program with a DSPy optimizer (train -> valid)")
    comp.add_argument("--data", required=True)
    comp.add_argument("--program", default="static", help="none|random|static|adaptive or a saved .json")
    comp.add_argument("--optimizer", default="mipro", choices=["mipro", "bootstrap"])
    comp.add_argument("--metric", default="hr1", choices=["hr1", "hr1+valid"])
    comp.add_argument("--lm", required=True, help="task LM: hf:PATH or provider/model")
    comp.add_argument("--prompt-lm", help="LM that proposes instructions (default: --lm)")
    comp.add_argument("--adapter")
    comp.add_argument("--api-base")
    comp.add_argument("--mode", choices=["generate", "score"])
    comp.add_argument("--n", type=int, default=10)
    comp.add_argument("--m", type=int, default=5)
    comp.add_argument("--num-trials", type=int, default=4)
    comp.add_argument("--num-candidates", type=int, default=3)
    comp.add_argument("--max-demos", type=int, default=2, help="bootstrap: demos per predictor")
    comp.add_argument("--train-size", type=int, default=50)
    comp.add_argument("--val-size", type=int, default=50)
    comp.add_argument("--max-new-tokens", type=int, default=64)
    comp.add_argument("--seed", type=int, default=0)
    comp.add_argument("--template")
    comp.add_argument("--name", help="file name under programs/<dataset>/ (default: PROGRAM-OPTIMIZER)")
    comp.add_argument("--programs-dir", default="programs")
    comp.add_argument("--runs-dir", default="runs/compile")
    comp.set_defaults(func=_cmd_compile)

    progs = groups.add_parser("programs", help="saved program states").add_subparsers(dest="command", required=True)
    diff = progs.add_parser("diff", help="how instructions/demos/config changed between two saved programs")
    diff.add_argument("a")
    diff.add_argument("b")
    diff.set_defaults(func=_cmd_programs_diff)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        args.func(args)
    except AdaptRecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
