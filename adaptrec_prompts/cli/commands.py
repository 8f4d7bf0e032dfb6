"""The `adaptrec` subcommands: each takes the parsed arguments, does one job and prints what it did.

Heavy imports happen inside each command, so `adaptrec --help` and `import adaptrec_prompts` stay light.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# light (no torch/DSPy at import); build_program and format_results stay importable from here
from adaptrec_prompts.evaluation.results import Results, format_results
from adaptrec_prompts.evaluation.runs import PROGRAM_CHOICES, build_program  # noqa: F401


def cmd_prepare(args: argparse.Namespace) -> None:
    from adaptrec_prompts.data.prepare import load_manifest, prepare_dataset
    from adaptrec_prompts.data.protocol import ProtocolConfig

    config = ProtocolConfig(
        history_len=args.history_len, min_history=args.min_history, k_candidates=args.k_candidates,
        seed=args.seed, extended_seeds=args.extended_seeds,
    )
    out = prepare_dataset(args.dataset, args.out, raw_dir=args.raw_dir, config=config, items_file=args.items_file,
                          domain=args.domain, overwrite=args.overwrite, cache_dir=args.cache_dir)
    manifest = load_manifest(out)
    counts = ", ".join(f"{s}={n}" for s, n in manifest["counts"]["examples"].items())
    print(f"wrote {out} ({args.dataset}, seed {args.seed}): {counts}")


def cmd_stats(args: argparse.Namespace) -> None:
    from adaptrec_prompts.data.prepare import stats

    info = stats(args.dir)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"dataset {info['dataset']}: {info['items']} items")
    print(f"{'split':<14}{'users':>8}{'examples':>10}  history length: examples")
    for split, s in info["splits"].items():
        hist = " ".join(f"{k}:{v}" for k, v in s["history_length"].items())
        print(f"{split:<14}{s['users']:>8}{s['examples']:>10}  {hist}")


def cmd_verify(args: argparse.Namespace) -> None:
    import time

    from adaptrec_prompts.data.prepare import FILES, load_manifest, verify_prepared

    started = time.perf_counter()
    manifest = load_manifest(args.dir)
    verify_prepared(args.dir, manifest)
    files = manifest.get(FILES)
    what = (f"{len(files)} files, {sum(f['bytes'] for f in files.values()) / 1e6:.1f} MB, match their recorded sha256"
            if isinstance(files, dict) else "the split files match the recorded data_hash (a folder written before "
            "per-file hashes: re-create it to get them)")
    print(f"{args.dir}: {what} ({time.perf_counter() - started:.2f} s)")


def cmd_download(args: argparse.Namespace) -> None:
    from adaptrec_prompts.data.download import download

    print(download(args.dataset, args.cache_dir))


def cmd_compare_llara(args: argparse.Namespace) -> None:
    from adaptrec_prompts.data.fidelity import compare_llara_movielens

    print(f"$ adaptrec data compare-llara --raw-dir {args.raw_dir} --llara-dir {args.llara_dir}")
    print(f"{'split':<8}{'rows':>6}{'matched':>9}{'same split':>12}{'exact row':>11}{'target at last ts':>19}{'any tie order':>15}")
    for split, c in compare_llara_movielens(args.raw_dir, args.llara_dir).items():
        print(f"{split:<8}{c['rows']:>6}{c['matched_one_user']:>9}{c['user_in_same_split']:>12}"
              f"{c['exact_row']:>11}{c['target_at_last_timestamp']:>19}{c['consistent_any_tie_order']:>15}")


def index_parts(args: argparse.Namespace):
    """(embedder, index) from the index options: `UserIndex.open`, the code path the Python API uses too."""
    from adaptrec_prompts.retrieval.index import UserIndex

    hnsw = {"ef_search": args.ef_search, "ef_construction": args.ef_construction, "max_neighbors": args.max_neighbors}
    index = UserIndex.open(args.chroma_path, data=args.data, url=args.chroma_url, embedder=args.embedder,
                           embed_model=args.embed_model, hnsw=hnsw, pool_size=args.pool_size,
                           pool_seed=args.pool_seed, progress=not args.no_progress, device=args.device)
    return index.embedder, index


def cmd_index_build(args: argparse.Namespace) -> None:
    embedder, index = index_parts(args)
    print(f"collection {index.name}: {index.count()} training examples, embedder {embedder.id}")


def cmd_index_neighbors(args: argparse.Namespace) -> None:
    from adaptrec_prompts.data.prepare import load_manifest, refuse_existing
    from adaptrec_prompts.retrieval.neighbors import build_neighbors

    refuse_existing(args.out, args.overwrite)  # before the index is opened or built
    _embedder, index = index_parts(args)
    out = build_neighbors(args.data, args.out, index, n=args.n, splits=args.splits.split(","),
                          overfetch=args.overfetch, overwrite=args.overwrite, train_sample=args.train_sample,
                          train_sample_seed=args.train_sample_seed, random_seed=args.random_seed,
                          progress=not args.no_progress)
    section = load_manifest(out)["neighbors"]
    print(f"wrote {args.out}: top-{args.n} neighbours from {index.name}")
    for split, st in section["splits"].items():
        ex = st["excluded"]
        print(f"  {split:<14} queries={st['queries']} refetched={st['refetched']} short={st['short']} "
              f"excluded_same_example={ex['same_example']} excluded_same_user={ex['same_user']} "
              f"excluded_not_before={ex['not_before_query_time']} skipped_user_seen={ex['user_seen']} "
              f"random_short={st['random_short']} seconds={st['seconds']}")


def cmd_bench_retrieval(args: argparse.Namespace) -> None:
    from adaptrec_prompts.benchmarks.retrieval import coverage, measure
    from adaptrec_prompts.data.prepare import load_prepared
    from adaptrec_prompts.data.schema import column
    from adaptrec_prompts.retrieval.embedders import CollabEmbedder, training_sequences

    print("$ adaptrec bench retrieval " + " ".join(sys.argv[3:]))
    pools = []
    for size in filter(None, args.sizes.split(",")):
        n = int(float(size.lower().replace("k", "e3").replace("m", "e6")))
        pools.append((f"synthetic {size}", ("synthetic", n, 0), ("synthetic", args.queries, 1)))
    for folder in [] if args.coverage_only else args.data or []:
        ddict = load_prepared(folder)
        emb = CollabEmbedder().fit(training_sequences(ddict["train"]))
        queries = emb.embed(column(ddict["test_extended"], "history_item_ids")[: args.queries])
        pools.append((f"{folder} collab", emb.embed(column(ddict["train"], "history_item_ids")), queries))
    hnsw = {"ef_search": args.ef_search, "ef_construction": args.ef_construction, "max_neighbors": args.max_neighbors}
    if pools:
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
            print(f"coverage@{args.n} {folder} valid ({c['n_queries']} queries), {name:<7}: target among the "
                  f"{args.n} users' next items {c['next_item']:.3f}, among their histories {c['history']:.3f}")


def cmd_bench_modes(args: argparse.Namespace) -> None:
    from adaptrec_prompts.benchmarks.modes import run

    print("$ adaptrec bench modes " + " ".join(sys.argv[3:]))
    r = run(args.data, examples=args.examples, m_select=args.m, max_new_tokens=args.max_new_tokens,
            model_dir=args.model_dir, device=args.device)
    print(f"model: locally built Llama, {r['params'] / 1e6:.1f}M parameters, fp32, on {r['device']}, "
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


def cmd_bench_sft(args: argparse.Namespace) -> None:
    from adaptrec_prompts.benchmarks.sft import run

    print("$ adaptrec bench sft " + " ".join(sys.argv[3:]), flush=True)
    r = run(args.data, model=args.model, rows=args.rows, selection=args.selection, m=args.m, lora_r=args.lora_r,
            prompt=args.prompt, demo_items=args.demo_items, lora_targets=args.lora_targets, device=args.device)
    print(f"model {r['model']}, fp32, on {r['device']}, {r['threads']} torch threads; LoRA r={r['lora_r']}; "
          f"selection={r['selection']} M={r['m']}; {r['rows']} timed examples per path, batch 1")
    for name, label in (("default", "default: TRL loss, full prompt, LoRA on all projections"),
                        ("fast", f"fast: answer-only logits, prompt={r['prompt']}, demo_items={r['demo_items']}, "
                                 f"LoRA on {r['lora_targets']}")):
        p = r[name]
        print(f"{label}: {p['tokens']:.0f} tokens/example ({p['answer_tokens']:.0f} trained), "
              f"{p['s_per_example']:.2f} s/example, {p['tokens_per_s']:.0f} tokens/s")
    print(f"ratio (default / fast): {r['ratio']:.1f}x")
    print(f"loss on the default path's first row and weights: TRL {r['loss_default']:.6f}, answer-only "
          f"{r['loss_fast']:.6f}, |diff| {r['loss_abs_diff']:.2e}")


def cmd_prompt(args: argparse.Namespace) -> None:
    import dspy

    from adaptrec_prompts.data.prepare import load_manifest, load_prepared
    from adaptrec_prompts.data.render import load_template, manifest_template
    from adaptrec_prompts.finetune.rows import stage3_row
    from adaptrec_prompts.programs.adaptrec import AdaptRec

    row = load_prepared(args.data)[args.split][args.index]
    template = load_template(args.template) if args.template else manifest_template(load_manifest(args.data))
    program = AdaptRec(template, selection=args.selection, n_retrieve=args.n, m_select=args.m, prompt=args.prompt,
                       demo_items=args.demo_items, labels=args.labels)
    messages = stage3_row(program, row)["prompt"]  # the inference messages (tested byte-identical)
    print(f"<!-- adaptrec prompt --data {args.data} --split {args.split} --index {args.index} "
          f"--selection {args.selection} --m {args.m} (dspy {dspy.__version__}, ChatAdapter) -->")
    for message in messages:
        print(f"### {message['role']}\n\n```text\n{message['content']}\n```\n")
    print(f"Target: {row['target_title']} (candidate {row['candidate_item_ids'].index(row['target_item_id']) + 1})")


def cmd_eval(args: argparse.Namespace, lm=None) -> Results:
    """`adaptrec eval`: the options are RunConfig's fields (`run_eval` does the work); `lm` reuses an already
    loaded LM (it must be the one `args.lm` names)."""
    from adaptrec_prompts.errors import IncompleteRunError
    from adaptrec_prompts.evaluation.runs import RunConfig, config_fields, run_eval

    config = RunConfig(**{name: getattr(args, name) for name in config_fields()})
    try:
        results = run_eval(config, lm=lm, progress=not args.no_progress, config_file=args.config)
    except IncompleteRunError as exc:  # print what was scored, then say how to finish
        if exc.results is not None:
            print(format_results(str(config.out), exc.results))
        raise
    print(format_results(str(config.out), results))
    return results


def cmd_compare(args: argparse.Namespace) -> None:
    from adaptrec_prompts.evaluation.runs import compare_runs

    res = compare_runs(args.a, args.b)
    print(f"$ adaptrec compare {args.a} {args.b}")
    print(f"{res['n']} shared examples (only in A: {res['only_in_a']}, only in B: {res['only_in_b']})")
    for key in ("HR@1", "NDCG@5"):
        r = res[key]
        print(f"{key}: A={r['a']:.3f} B={r['b']:.3f} B-A={r['diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] "
              f"{r['test']} p={r['p_value']:.4f}" + (f" discordant A-only/B-only={r['discordant']}"
                                                    if "discordant" in r else ""))


def cmd_tiny_model(args: argparse.Namespace) -> None:
    from adaptrec_prompts.backends.tiny import build_tiny_model
    from adaptrec_prompts.data.prepare import load_prepared

    out = build_tiny_model(args.data, args.out, size=args.size, texts=args.texts, vocab_size=args.vocab_size,
                           chat_template=args.chat, seed=args.seed)
    texts = min(args.texts, load_prepared(args.data)["train"].num_rows)
    print(f"wrote {out} (random {args.size} Llama, tokenizer trained on {texts} rendered training prompts)")


def cmd_compile(args: argparse.Namespace) -> None:
    from adaptrec_prompts.backends.api import is_local, make_lm
    from adaptrec_prompts.data.prepare import load_manifest, load_prepared
    from adaptrec_prompts.errors import ConfigError
    from adaptrec_prompts.evaluation.harness import _sha, estimate_cost, evaluate, program_state
    from adaptrec_prompts.programs.adaptrec import AdaptRec
    from adaptrec_prompts.programs.optimize import call_budget, compile_program, to_examples
    from adaptrec_prompts.programs.saving import save_program

    manifest = load_manifest(args.data)
    ddict = load_prepared(args.data)
    program = build_program(args.program, args.data, n=args.n, m=args.m, mode=args.mode or "score",
                            template=args.template, mode_given=args.mode is not None)
    if not isinstance(program, AdaptRec):
        raise ConfigError("compile needs an AdaptRec program (none|random|random-retrieved|static|adaptive or a "
                          "saved .json)")
    # keep_in_memory: never write a cache file into the prepared (frozen) folder
    train = ddict["train"].shuffle(seed=args.seed, keep_in_memory=True).select(
        range(min(args.train_size, ddict["train"].num_rows)))
    valid = ddict["valid"].select(range(min(args.val_size, ddict["valid"].num_rows)))
    progress = not args.no_progress
    local = {"progress": progress, "device": args.device}  # local models: loading bar, where they run
    lm_kwargs = {"max_new_tokens": args.max_new_tokens, **local} if is_local(args.lm) else {"timeout": 120.0}
    lm = make_lm(args.lm, adapter=args.adapter, api_base=args.api_base, **lm_kwargs)
    prompt_lm = make_lm(args.prompt_lm, api_base=args.api_base, **(local if is_local(args.prompt_lm) else
                                                                   {"timeout": 120.0})) if args.prompt_lm else lm
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
               "examples": valid.num_rows, "purpose": "compile validation",
               **({"device": args.device} if args.device != "cpu" else {})}  # recorded as adaptrec eval does
    rows = valid.to_list()
    before = evaluate(program, rows, runs / "before", {**run_cfg, "program": "base"}, lm=lm, progress=progress,
                      data_manifest=manifest)
    with dspy_context(lm):
        compiled = compile_program(program, to_examples(train), to_examples(valid), args.optimizer, args.metric,
                                   num_trials=args.num_trials, num_candidates=args.num_candidates,
                                   max_demos=args.max_demos, prompt_lm=prompt_lm, seed=args.seed)
    save_program(compiled, out_json)
    after = evaluate(compiled, rows, runs / "after", {**run_cfg, "program": str(out_json)}, lm=lm,
                     progress=progress, data_manifest=manifest)
    record = {"optimizer": args.optimizer, "metric": args.metric,
              "budget": {"num_trials": args.num_trials, "num_candidates": args.num_candidates,
                         "max_demos": args.max_demos, "train_size": train.num_rows, "val_size": valid.num_rows,
                         "lm_calls_upper_bound": calls},
              "base_program_hash": _sha(base_state), "program_hash": _sha(program_state(compiled)),
              "lm": args.lm, "prompt_lm": args.prompt_lm or args.lm, "device": args.device,
              "data_hash": manifest.get("data_hash"),
              "validation": {"before": before["metrics"], "after": after["metrics"], "n": after["n"]},
              "runs": {"before": str(runs / "before"), "after": str(runs / "after")}}
    out_json.with_suffix(".manifest.json").write_text(json.dumps(record, indent=2) + "\n")
    print(format_results("validation before", before))
    print(format_results("validation after ", after))
    print(f"saved {out_json} (+ .manifest.json); evaluate it with: adaptrec eval --program {out_json} ...")


def dspy_context(lm):
    import dspy

    from adaptrec_prompts.programs.chat_adapters import eval_adapter

    return dspy.context(lm=lm, adapter=eval_adapter())


def cmd_programs_diff(args: argparse.Namespace) -> None:
    from adaptrec_prompts.programs.optimize import diff_programs

    print(diff_programs(args.a, args.b))


def cmd_sft_experiment(args: argparse.Namespace) -> None:
    import shlex

    from adaptrec_prompts.finetune.experiment import SFTExperiment, run

    config = SFTExperiment(
        data=args.data, out=args.out, model=args.model, variants=tuple(v for v in args.variants.split(",") if v),
        train_rows=args.train_rows, sample_seed=args.sample_seed, epochs=args.epochs, batch_size=args.batch_size,
        grad_accum=args.grad_accum, learning_rate=args.learning_rate, lora_r=args.lora_r,
        lora_targets=args.lora_targets, prompt=args.prompt, demo_items=args.demo_items or None, labels=args.labels,
        loss=args.loss, diagnostics_rows=args.diagnostics_rows, diagnostics_train_rows=args.diagnostics_train_rows,
        diagnostics_steps=args.diagnostics_steps,
        n=args.n, m=args.m,
        split=args.split, limit=args.limit, mode=args.mode, checkpoint_minutes=args.checkpoint_minutes,
        device=args.device, report=args.report, title=args.title,
        gradient_checkpointing=args.gradient_checkpointing, train_only=args.train_only)
    report = run(config, "adaptrec sft-experiment " + shlex.join(sys.argv[2:]), config_file=args.config,
                 progress=not args.no_progress)
    print(f"trained: {report / 'train'}" if config.train_only else f"report: {report / 'table.md'}")


def _names(text: str | None) -> tuple[str, ...]:
    """A comma-separated option as a tuple, empty items dropped ("" and None: none)."""
    return tuple(x for x in (text or "").split(",") if x)


def cmd_experiment(args: argparse.Namespace) -> None:
    import shlex

    from adaptrec_prompts.errors import ConfigError
    from adaptrec_prompts.experiments.experiment import Experiment, run_experiment

    try:
        m_values = tuple(int(x) for x in _names(args.m_values))
    except ValueError:
        raise ConfigError(f"--m-values {args.m_values!r}: expected comma-separated whole numbers, e.g. 1,3,5") from None
    config = Experiment(
        data=args.data, lm=args.lm, out=args.out, split=args.split, limit=args.limit, chunk=args.chunk,
        variants=_names(args.variants), m=args.m, m_values=m_values, n=args.n, embedders=_names(args.embedders),
        prepared=args.prepared, pool_size=args.pool_size, embed_model=args.embed_model, mode=args.mode,
        max_new_tokens=args.max_new_tokens, seed=args.seed, device=args.device, report=args.report, title=args.title)
    run_experiment(config, "adaptrec experiment " + shlex.join(sys.argv[2:]), config_file=args.config,
                   progress=not args.no_progress)


def cmd_pipeline(args: argparse.Namespace) -> None:
    """prepare -> Stage-1 neighbours -> baselines -> AdaptRec (static M) and zero-shot with an LM -> one table."""
    import time

    from adaptrec_prompts.experiments.pipeline import (adapter_program, describe_adapters, lm_run_name, main_job,
                                                       shipped_adapters, table, tuned_run_name)

    started = time.perf_counter()
    adapters = None if args.adapters is None else [a for a in args.adapters.split(",") if a and a != "none"]
    adapters = shipped_adapters(args.lm) if adapters is None else adapters
    results = main_job(args.out, raw_dir=args.raw_dir, lm=args.lm, limit=args.limit, n=args.n, m=args.m,
                       device=args.device, progress=not args.no_progress, adapters=adapters)
    print("\n" + table(results, limit=args.limit, n=args.n, m=args.m))
    zero_shot, static = (results[lm_run_name(args.lm, p)].path for p in ("none", "static"))
    print(f"\ntotal {time.perf_counter() - started:.0f} s. Full test set: --limit 95; paired test: adaptrec compare "
          f"{zero_shot} {static}")
    if adapters:
        selections = [adapter_program(a)["selection"] for a in adapters]
        tuned = {s: results[tuned_run_name(args.lm, s)].path for s in selections}
        pair = f"\n  paired: adaptrec compare {tuned['none']} {tuned['static']}" if {"none", "static"} <= set(tuned) else ""
        print("Tuned rows (the paper's main setting, fine-tuned with vs without demonstrations):\n  "
              + "\n  ".join(describe_adapters(adapters)) + pair)
    print("To train such adapters yourself (the shipped pair's recipe; each manifest in finetune/adapters records its "
          "training seconds):\n  adaptrec index neighbors --data " + f"{Path(args.out) / 'ml-100k'} --out "
          f"{Path(args.out) / 'ml-100k-sft'} --splits train,valid,test --train-sample 3000\n  adaptrec sft-experiment "
          f"--data {Path(args.out) / 'ml-100k-sft'} --out {Path(args.out) / 'sft'} --train-rows 192 --grad-accum 4 "
          "--learning-rate 5e-4 --lora-targets attention --labels titles --loss listwise --variants none,static")
