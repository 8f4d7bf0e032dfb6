"""The `adaptrec` command line. Subcommands grow with the stages; each prints what it did."""

from __future__ import annotations

import argparse
import json
import logging
import sys

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
