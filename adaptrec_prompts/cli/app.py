"""The `adaptrec` command line. Subcommands grow with the stages; each prints what it did."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from adaptrec_prompts.cli import commands
from adaptrec_prompts.cli.commands import PROGRAM_CHOICES
from adaptrec_prompts.cli.config_file import ConfigFileParser, add_config_option
from adaptrec_prompts.errors import DISK_FULL, AdaptRecError, Interrupted
from adaptrec_prompts.utils.devices import DEVICE_HELP, device_problem
from adaptrec_prompts.utils.options import number_problem, valid_range

SPLITS = ("train", "valid", "test", "test_extended")  # schema.SPLITS, without importing datasets here
NO_PROGRESS = "no progress bars (they show only when stderr is a terminal and CI is not set)"


def _add_index_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="a prepared folder (adaptrec data prepare)")
    p.add_argument("--embedder", default="collab", help="collab (default), lm or text")
    p.add_argument("--embed-model", help="local model folder for the lm/text embedders")
    p.add_argument("--chroma-path", default="artifacts/chroma", help="embedded Chroma folder (default)")
    p.add_argument("--chroma-url", help="a Chroma server, e.g. http://127.0.0.1:8000 (`chroma run`)")
    p.add_argument("--ef-search", type=number_type(1), default=400)
    p.add_argument("--ef-construction", type=number_type(1), default=200)
    p.add_argument("--max-neighbors", type=number_type(2), default=32)
    p.add_argument("--pool-size", type=number_type(1),
                   help="index a seeded sample of this many training examples (default all)")
    p.add_argument("--pool-seed", type=number_type(0), default=0)
    add_device_option(p, "; for the lm/text embedders")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)


def make_parser() -> argparse.ArgumentParser:
    from adaptrec_prompts.data import DATASET_NAMES

    parser = ConfigFileParser(prog="adaptrec", description=__doc__)  # --config FILE where a command offers it
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
    prep.add_argument("--seed", type=number_type(0), default=0, help="candidate-sampling seed (default 0)")
    prep.add_argument("--k-candidates", type=number_type(2), default=20)
    prep.add_argument("--history-len", type=number_type(1), default=10)
    prep.add_argument("--min-history", type=number_type(1), default=3)
    prep.add_argument("--extended-seeds", type=number_type(1), default=1, help="candidate seeds in test_extended")
    prep.add_argument("--cache-dir", default="artifacts/raw", help="where downloads are kept")
    prep.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    prep.set_defaults(func=commands.cmd_prepare)

    st = data.add_parser("stats", help="users, items, examples per split, history-length histogram")
    st.add_argument("dir")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=commands.cmd_stats)

    ver = data.add_parser("verify", help="check a prepared folder's files against the sizes and sha256s in its "
                          "manifest (every command that opens the folder does this too)")
    ver.add_argument("dir")
    ver.set_defaults(func=commands.cmd_verify)

    dl = data.add_parser("download", help="fetch an official archive (needs a network)")
    dl.add_argument("--dataset", required=True, choices=["ml-100k", "lastfm"])
    dl.add_argument("--cache-dir", default="artifacts/raw")
    dl.set_defaults(func=commands.cmd_download)

    cmp_ = data.add_parser("compare-llara", help="how many LLaRA MovieLens rows our raw protocol reproduces")
    cmp_.add_argument("--raw-dir", required=True, help="ml-100k raw folder")
    cmp_.add_argument("--llara-dir", required=True, help="LLaRA data/ref/movielens folder")
    cmp_.set_defaults(func=commands.cmd_compare_llara)

    index = groups.add_parser("index", help="Stage 1: Chroma user index and persisted neighbours").add_subparsers(
        dest="command", required=True)
    build = index.add_parser("build", help="embed the training pool and index it in Chroma (idempotent)")
    _add_index_options(build)
    build.set_defaults(func=commands.cmd_index_build)
    nb = index.add_parser("neighbors", help="write a copy of --data with top-N neighbour columns on every split")
    _add_index_options(nb)
    nb.add_argument("--out", required=True)
    nb.add_argument("--n", type=number_type(1, 50), default=10,
                    help="neighbours per example (1..50; the paper's N is 10)")
    nb.add_argument("--splits", default="train,valid,test,test_extended", help="comma-separated splits to query")
    nb.add_argument("--overfetch", type=number_type(1), default=3, help="fetch n*overfetch+10 before exclusions")
    nb.add_argument("--overwrite", action="store_true")
    nb.add_argument("--train-sample", type=number_type(1), help="query only a seeded sample of this many train rows "
                    "(enough for fine-tuning on that sample; the rest get no neighbours)")
    nb.add_argument("--train-sample-seed", type=number_type(0), default=0)
    nb.add_argument("--random-seed", type=number_type(0), default=0,
                    help="seed of the random-users control (random_* columns)")
    nb.set_defaults(func=commands.cmd_index_neighbors)

    bench = groups.add_parser("bench", help="benchmarks that print measured numbers").add_subparsers(
        dest="command", required=True)
    br = bench.add_parser("retrieval", help="Chroma vs exact search speed/recall; Stage-1 coverage")
    br.add_argument("--sizes", default="10k,100k", help="synthetic pool sizes, e.g. 10k,100k,1M")
    br.add_argument("--data", action="append", help="prepared folder(s) for real collab embeddings (repeatable)")
    br.add_argument("--n", type=number_type(1), default=10)
    br.add_argument("--queries", type=number_type(1), default=1000)
    br.add_argument("--ef-search", type=number_type(1), default=400)
    br.add_argument("--ef-construction", type=number_type(1), default=200)
    br.add_argument("--max-neighbors", type=number_type(2), default=32)
    br.add_argument("--coverage-only", action="store_true", help="only the Stage-1 coverage of each --data folder")
    br.set_defaults(func=commands.cmd_bench_retrieval)
    bm = bench.add_parser("modes", help="generate vs score mode wall time on a locally built ~25M Llama")
    bm.add_argument("--data", required=True, help="a prepared folder with neighbour columns")
    bm.add_argument("--examples", type=number_type(1), default=10)
    bm.add_argument("--m", type=number_type(1), default=5)
    bm.add_argument("--max-new-tokens", type=number_type(1), default=32)
    bm.add_argument("--model-dir", help="reuse/keep the built model here")
    add_device_option(bm)
    bm.set_defaults(func=commands.cmd_bench_modes)
    bs = bench.add_parser("sft", help="s/training example: TRL's default loss vs logits only at the answer")
    bs.add_argument("--data", required=True, help="a prepared folder with neighbour columns on train rows")
    bs.add_argument("--model", default="gemma-3-270m", help="gemma-3-270m (extra .[gemma]), tiny, or a model folder")
    bs.add_argument("--rows", type=number_type(1), default=6, help="timed training steps per path (batch 1; +1 warm-up)")
    bs.add_argument("--selection", default="static", choices=["none", "random", "static"])
    bs.add_argument("--m", type=number_type(1), default=5)
    bs.add_argument("--lora-r", type=number_type(1), default=16)
    bs.add_argument("--lora-targets", default="all", choices=["all", "attention", "mlp"])
    bs.add_argument("--prompt", default="full", choices=["full", "compact"])
    bs.add_argument("--demo-items", type=number_type(1), help="show each similar user's last N items only")
    add_device_option(bs, "; training runs on the first visible GPU")
    bs.set_defaults(func=commands.cmd_bench_sft)

    pr = groups.add_parser("prompt", help="print the exact Stage-3 messages DSPy sends for one example")
    pr.add_argument("--data", required=True)
    pr.add_argument("--split", default="test", choices=SPLITS)
    pr.add_argument("--index", type=number_type(0), default=0)
    pr.add_argument("--selection", default="static", choices=["none", "random", "random-retrieved", "static"])
    pr.add_argument("--prompt", default="full", choices=["full", "compact"])
    pr.add_argument("--demo-items", type=number_type(1), help="show each similar user's last N items only")
    pr.add_argument("--labels", default="numbers", choices=["numbers", "letters", "titles"],
                    help="Stage-3 candidate labels: letters are one token in any tokenizer (API score mode); titles: "
                         "no label, the answer is the title (local score mode ranks the titles)")
    pr.add_argument("--n", type=number_type(1), default=10)
    pr.add_argument("--m", type=number_type(1), default=5)
    pr.add_argument("--template", help="domain name or .toml path (default: the folder's domain)")
    pr.set_defaults(func=commands.cmd_prompt)

    ev = groups.add_parser("eval", help="score a program or baseline on a frozen split (resumable)")
    ev.add_argument("--data", required=True, help="prepared folder (with neighbour columns for AdaptRec variants)")
    ev.add_argument("--split", default="test", choices=SPLITS)
    ev.add_argument("--program", default="static", help=PROGRAM_CHOICES)
    ev.add_argument("--lm", help="hf:PATH for a local model, or a provider/model for dspy.LM (e.g. openai/gpt-4o)")
    ev.add_argument("--adapter", help="peft LoRA adapter folder for hf: models")
    ev.add_argument("--api-base", help="OpenAI-compatible server URL (vLLM, llama.cpp)")
    ev.add_argument("--mode", choices=["generate", "score", "score-calibrated", "score-permuted"],
                    help="Stage-3 mode (default score)")
    ev.add_argument("--retries", type=non_negative_int, default=2,
                    help="harness retries of an example after a provider error (not after a timeout)")
    ev.add_argument("--timeout", type=positive_seconds, default=120.0,
                    help="API models: seconds before a request is abandoned")
    ev.add_argument("--num-retries", type=non_negative_int, default=3,
                    help="API models: dspy.LM's own retries per request")
    ev.add_argument("--prompt", choices=["full", "compact"],
                    help="full: DSPy's ChatAdapter; compact: instructions-only system message (match the SFT rows); "
                    "default: the --adapter's trained one, else full")
    ev.add_argument("--demo-items", type=number_type(1), help="show each similar user's last N items only "
                    "(default: the --adapter's trained value, else all)")
    ev.add_argument("--labels", choices=["numbers", "letters", "titles"],
                    help="Stage-3 candidate labels: letters are one token in any tokenizer (API score mode); titles: "
                    "no label, the answer is the title (local score mode ranks the titles); default: the --adapter's "
                    "trained ones, else numbers")
    ev.add_argument("--n", type=number_type(1), default=10, help="n_retrieve (N)")
    ev.add_argument("--m", type=number_type(1), default=5, help="m_select (M)")
    ev.add_argument("--seed", type=number_type(0), default=0)
    ev.add_argument("--limit", type=positive_int, help="first N examples of the split")
    ev.add_argument("--threads", type=number_type(1), default=1, help="parallel examples (API backends)")
    ev.add_argument("--max-new-tokens", type=number_type(1), default=64)
    add_device_option(ev)
    ev.add_argument("--template", help="domain name or .toml path (default: the data's domain)")
    ev.add_argument("--out", required=True, help="run folder: results.json, manifest.json, predictions.jsonl")
    ev.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)
    add_config_option(ev)
    ev.set_defaults(func=commands.cmd_eval)

    cmp2 = groups.add_parser("compare", help="paired comparison of two runs on the same examples",
                             description="Paired comparison of two finished runs on the examples both scored "
                             "(errored examples left out): HR@1 and NDCG@5 of each, B-A with a 95% paired bootstrap "
                             "CI, and a p-value: McNemar's exact test for HR@1 and a sign-flip permutation test for "
                             "NDCG@5 (with one row per user; when users have several rows, users are resampled and "
                             "both p-values flip each user's summed difference). Also prints how many examples "
                             "only one run has.")
    cmp2.add_argument("a", help="run folder A, the reference (an `adaptrec eval --out` folder with predictions.jsonl)")
    cmp2.add_argument("b", help="run folder B, compared with A (B-A is reported)")
    cmp2.set_defaults(func=commands.cmd_compare)

    model = groups.add_parser("model", help="local models").add_subparsers(dest="command", required=True)
    tiny = model.add_parser("tiny", help="build a random tiny Llama + a tokenizer trained on the data (offline)")
    tiny.add_argument("--data", required=True)
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--size", default="micro", choices=["micro", "small", "25m"])
    tiny.add_argument("--vocab-size", type=number_type(1), default=4000)
    tiny.add_argument("--texts", type=number_type(1), default=2000, help="training prompts used to train the tokenizer")
    tiny.add_argument("--chat", action="store_true", help="give the tokenizer a chat template")
    tiny.add_argument("--seed", type=number_type(0), default=0)
    tiny.set_defaults(func=commands.cmd_tiny_model)

    comp = groups.add_parser("compile", help="compile an AdaptRec program with a DSPy optimizer (train -> valid)")
    comp.add_argument("--data", required=True)
    comp.add_argument("--program", default="static",
                      help="none|random|random-retrieved|static|adaptive or a saved .json")
    comp.add_argument("--optimizer", default="mipro", choices=["mipro", "bootstrap"])
    comp.add_argument("--metric", default="hr1", choices=["hr1", "hr1+valid"])
    comp.add_argument("--lm", required=True, help="task LM: hf:PATH or provider/model")
    comp.add_argument("--prompt-lm", help="LM that proposes instructions (default: --lm)")
    comp.add_argument("--adapter")
    comp.add_argument("--api-base")
    comp.add_argument("--mode", choices=["generate", "score", "score-calibrated", "score-permuted"])
    comp.add_argument("--n", type=number_type(1), default=10)
    comp.add_argument("--m", type=number_type(1), default=5)
    comp.add_argument("--num-trials", type=number_type(1), default=4)
    comp.add_argument("--num-candidates", type=number_type(1), default=3)
    comp.add_argument("--max-demos", type=number_type(1), default=2, help="bootstrap: demos per predictor")
    comp.add_argument("--train-size", type=number_type(1), default=50)
    comp.add_argument("--val-size", type=number_type(1), default=50)
    comp.add_argument("--max-new-tokens", type=number_type(1), default=64)
    add_device_option(comp)
    comp.add_argument("--seed", type=number_type(0), default=0)
    comp.add_argument("--template")
    comp.add_argument("--name", help="file name under programs/<dataset>/ (default: PROGRAM-OPTIMIZER)")
    comp.add_argument("--programs-dir", default="programs")
    comp.add_argument("--runs-dir", default="runs/compile")
    comp.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)
    comp.set_defaults(func=commands.cmd_compile)

    ex = groups.add_parser("experiment", help="the paper's claims on one dataset: zero-shot vs random vs static vs "
                           "adaptive, the M sweep, collab vs lm Stage 1, paired tests (resumable, in rounds)")
    ex.add_argument("--data", required=True, help="prepared folder with neighbour columns for --split")
    ex.add_argument("--lm", required=True, help="gemma-3-270m, hf:PATH, or a provider/model")
    ex.add_argument("--out", required=True, help="experiment folder (one run folder per variant)")
    ex.add_argument("--split", default="test", choices=SPLITS)
    ex.add_argument("--limit", type=positive_int, help="examples per variant (default: the whole split)")
    ex.add_argument("--chunk", type=number_type(1), default=20, help="examples added to every variant per round")
    ex.add_argument("--variants", default="none,random,static,adaptive", help="AdaptRec selections to run at --m")
    ex.add_argument("--m", type=number_type(1), default=5, help="M for the variants (paper: 5)")
    ex.add_argument("--m-values", default="1,3,5,7,9", help="static-selection M sweep ('' to skip)")
    ex.add_argument("--n", type=number_type(1), default=10, help="N retrieved users")
    ex.add_argument("--embedders", help="Stage-1 comparison, e.g. collab,lm (needs --prepared)")
    ex.add_argument("--prepared", help="the prepared folder without neighbours (for --embedders)")
    ex.add_argument("--pool-size", type=number_type(1), default=3000, help="training examples sampled into each Stage-1 "
                    "comparison index (the lm embedder is a forward pass per example)")
    ex.add_argument("--embed-model", help="model folder for the lm embedder (default: the --lm model)")
    ex.add_argument("--mode", default="score", choices=["score", "score-calibrated", "score-permuted"],
                    help="Stage-3 scoring")
    ex.add_argument("--max-new-tokens", type=number_type(1), default=64)
    add_device_option(ex, "; also the lm embedder's model")
    ex.add_argument("--seed", type=number_type(0), default=0)
    ex.add_argument("--report", help="report folder (default OUT/report)")
    ex.add_argument("--title")
    ex.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)
    add_config_option(ex)
    ex.set_defaults(func=commands.cmd_experiment)

    fx = groups.add_parser("sft-experiment", help="the paper's main setting: LoRA-fine-tuned zero-shot vs AdaptRec "
                           "(static, self-adaptive) on one training sample, then paired tests (resumable)")
    fx.add_argument("--data", required=True, help="neighbour folder with train neighbours for the sample")
    fx.add_argument("--out", required=True, help="experiment folder")
    fx.add_argument("--model", default="gemma-3-270m", help="gemma-3-270m, tiny, or a model folder")
    fx.add_argument("--variants", default="none,static,adaptive")
    fx.add_argument("--train-rows", type=number_type(1), default=1000)
    fx.add_argument("--sample-seed", type=number_type(0), default=0)
    fx.add_argument("--epochs", type=number_type(0, integer=False, above=True), default=1.0)
    fx.add_argument("--batch-size", type=number_type(1), default=1)
    fx.add_argument("--grad-accum", type=number_type(1), default=8)
    fx.add_argument("--learning-rate", type=number_type(0, integer=False, above=True), default=2e-4)
    fx.add_argument("--lora-r", type=number_type(1), default=16)
    fx.add_argument("--lora-targets", default="all", choices=["all", "attention", "mlp"])
    fx.add_argument("--prompt", default="compact", choices=["full", "compact"])
    fx.add_argument("--demo-items", type=number_type(0), default=5, help="each similar user's last N items (0: all)")
    fx.add_argument("--labels", default="numbers", choices=["numbers", "letters", "titles"],
                    help="Stage-3 candidate labels: letters are one token in any tokenizer (API score mode); titles: "
                         "no label, the answer is the title (local score mode ranks the titles)")
    fx.add_argument("--loss", default="answer", choices=["answer", "listwise"],
                    help="answer: TRL's SFT loss on the answer tokens; listwise: cross-entropy of the target among the "
                         "K candidates' answer scores (what score mode ranks by)")
    fx.add_argument("--diagnostics-rows", type=number_type(0), default=0,
                    help="choice diagnostics while training: validation rows scored (0: off)")
    fx.add_argument("--diagnostics-train-rows", type=number_type(0), default=0,
                    help="choice diagnostics: training rows scored too (can the adapter fit its own rows?)")
    fx.add_argument("--diagnostics-steps", type=number_type(0), default=0,
                    help="choice diagnostics every N steps (0: before and after training only)")
    fx.add_argument("--m", type=number_type(1), default=5)
    fx.add_argument("--n", type=number_type(1), default=10)
    fx.add_argument("--split", default="test", choices=SPLITS)
    fx.add_argument("--limit", type=positive_int, help="evaluate the first N rows of --split")
    fx.add_argument("--mode", default="score", choices=["score", "score-calibrated", "score-permuted"])
    fx.add_argument("--checkpoint-minutes", type=number_type(0, integer=False), default=5.0)
    fx.add_argument("--gradient-checkpointing", action="store_true",
                    help="recompute activations in the backward pass (TRL's default; off here: slower on CPU)")
    fx.add_argument("--train-only", action="store_true", help="train the variants, skip evaluation")
    add_device_option(fx, "; training runs on the first visible GPU (pick one with CUDA_VISIBLE_DEVICES)")
    fx.add_argument("--report", help="report folder (default OUT/report)")
    fx.add_argument("--title")
    fx.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)
    add_config_option(fx)
    fx.set_defaults(func=commands.cmd_sft_experiment)

    pipe = groups.add_parser("pipeline", help="the main job: ML-100K -> Stage 1 -> baselines -> AdaptRec vs "
                             "zero-shot with an LM (default Gemma 3 270M), one table with CIs",
                             description="The README's main job, resumable: prepare ML-100K (OUT/ml-100k), embed "
                             "its training users in an embedded Chroma index (OUT/chroma) and write N Stage-1 "
                             "neighbours per test user (OUT/ml-100k-nb), score Random, Popularity, UserKNN and demo-match "
                             "on all 95 test users, then the LM zero-shot and AdaptRec (static selection, M users, score "
                             "mode) on the first --limit users (OUT/runs), untuned and with each adapter (--adapters). Prints one table with 95% CIs, the "
                             "chance level, what each metric means and a flag for runs that mostly rank one list "
                             "position first.")
    pipe.add_argument("--raw-dir", help="ml-100k raw folder (default: download from GroupLens into OUT/raw)")
    pipe.add_argument("--out", default="artifacts/main", help="the job folder: ml-100k (prepared), ml-100k-nb (with "
                      "neighbours), chroma, runs/<name>; a rerun reuses everything finished in it "
                      "(default: %(default)s)")
    pipe.add_argument("--lm", default="gemma-3-270m", help="gemma-3-270m (extra .[gemma]), hf:PATH, or an API model "
                      "(default: %(default)s)")
    pipe.add_argument("--limit", type=positive_int, default=40, help="test users for the LLM rows (95 = all; "
                      "default: %(default)s)")
    pipe.add_argument("--n", type=number_type(1, 50), default=10, help="N, similar users retrieved per test user in "
                      "Stage 1 (also UserKNN's neighbours; default: %(default)s)")
    pipe.add_argument("--m", type=number_type(1), default=5, help="M, of the N retrieved users those shown to the LM "
                      "as demonstrations in the AdaptRec row (static selection: the M most similar; "
                      "default: %(default)s)")
    pipe.add_argument("--adapters", help="comma-separated LoRA adapter folders trained on --lm, one tuned row each "
                      "(default: the two shipped in finetune/adapters, zero-shot and static, when --lm is gemma-3-270m; "
                      "'none' for no tuned rows)")
    add_device_option(pipe)
    pipe.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)
    pipe.set_defaults(func=commands.cmd_pipeline)

    progs = groups.add_parser("programs", help="saved program states").add_subparsers(dest="command", required=True)
    diff = progs.add_parser("diff", help="how instructions/demos/config changed between two saved programs")
    diff.add_argument("a")
    diff.add_argument("b")
    diff.set_defaults(func=commands.cmd_programs_diff)
    return parser


def device_name(text: str) -> str:
    """argparse type of --device: a device name (`devices`), checked before any data or model is loaded."""
    problem = device_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def add_device_option(p: argparse.ArgumentParser, what: str = "") -> None:
    """--device, the same option wherever a local model runs (`eval` defined it first)."""
    p.add_argument("--device", default="cpu", type=device_name, help=DEVICE_HELP + what)


def number_type(low=None, high=None, *, integer: bool = True, above: bool = False):
    """An argparse `type=`: parse the text, then apply `number_problem`'s rule (message: the valid range)."""

    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole' if integer else 'a'} number "
                                             f"{valid_range(low, high) if not above else f'> {low}'}, got {text!r}") from None
        problem = number_problem(value, low=low, high=high, integer=integer, above=above)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = "number"  # argparse names the type in "invalid number value"
    return parse


positive_int = number_type(1)  # argparse type: a whole number >= 1 (a 0 or negative count selects no example)


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0 (retry counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0 (0: no retry), got {value}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a number of seconds > 0 (a request timeout)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0 (e.g. 120), got {text}")
    return value


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into what Ctrl-C raises, so a killed run says what it saved as Ctrl-C does."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    import signal
    import threading

    previous = None
    if threading.current_thread() is threading.main_thread():  # `kill PID` stops a run as Ctrl-C does
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        args.func(args)
    except (Interrupted, KeyboardInterrupt) as exc:
        # a run's example loop says what it saved (Interrupted); elsewhere (loading, building) nothing is half-written
        terminated = isinstance(exc, _Terminated) or isinstance(exc.__context__, _Terminated)
        word = "terminated" if terminated else "interrupted"
        print(f"{word}: {exc.cli_message}" if isinstance(exc, Interrupted) else
              f"{word}; finished work is kept on disk, run the same command again to continue", file=sys.stderr,
              flush=True)
        if terminated:  # requests still in flight on worker threads must not keep a killed process alive
            sys.stdout.flush()
            logging.shutdown()
            os._exit(143)
        return 130
    except AdaptRecError as exc:  # the message in the command line's words (flags, not Python arguments)
        print(f"error: {exc.cli_message}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk anywhere else (a library's own write): name the file, no traceback
        if exc.errno not in DISK_FULL:
            raise
        print(f"error: no space left writing {exc.filename or 'a file'} ({exc.strerror}): free disk space or "
              "choose another output folder, then run the same command again", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
