"""Quickstart: the Python API end to end on MovieLens-100K with a tiny local model (CPU, about a minute).

    python examples/quickstart.py [--raw-dir ../shared/data/ml-100k] [--out artifacts/quickstart]

1. prepare the frozen splits (`prepare_dataset`, = `adaptrec data prepare`);
2. open the Chroma user index (`UserIndex.open`, = `adaptrec index build`; a sampled pool keeps it quick);
3. recommend for a new user's history: Stage-1 neighbours retrieved live, static selection of M of them,
   Stage 3 in score mode (`AdaptRec.from_index`);
4. evaluate the same live program on a few test users (`evaluate`: each row's own user and time are
   excluded from its neighbours, as `adaptrec index neighbors` excludes them).

The model is a randomly initialised micro Llama (`build_tiny_model`): the point is the
plumbing, not the quality of its rankings. Swap in `make_lm("hf:PATH")` or `make_lm("openai/gpt-4o")`
for a real one. Outputs already in `--out` are reused, so a second run is faster.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import dspy

from adaptrec_prompts import (AdaptRec, UserIndex, build_tiny_model, evaluate, load_prepared, make_lm,
                              prepare_dataset)

REPO = Path(__file__).resolve().parents[1]
HISTORY = ["Star Wars (1977)", "Raiders of the Lost Ark (1981)", "Return of the Jedi (1983)", "Fargo (1996)",
           "Pulp Fiction (1994)"]
CANDIDATES = ["The Empire Strikes Back (1980)", "Scream (1996)", "Liar Liar (1997)", "Titanic (1997)",
              "Contact (1997)"]


def default_raw_dir() -> Path:
    return Path(os.environ.get("ADAPTREC_DATA", REPO.parent / "shared" / "data")) / "ml-100k"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw-dir", type=Path, default=default_raw_dir(), help="the unpacked ml-100k files")
    parser.add_argument("--out", type=Path, default=Path("artifacts/quickstart"))
    parser.add_argument("--limit", type=int, default=3, help="test users to evaluate")
    parser.add_argument("--pool-size", type=int, default=2000, help="training examples in the index (all: 0)")
    args = parser.parse_args(argv)

    data = args.out / "ml-100k"
    if not (data / "manifest.json").is_file():
        prepare_dataset("ml-100k", data, raw_dir=args.raw_dir)
    splits = load_prepared(data)
    print(f"1. prepared {data}: " + ", ".join(f"{s}={splits[s].num_rows}" for s in splits))

    index = UserIndex.open(args.out / "chroma", data=data, pool_size=args.pool_size or None)
    print(f"2. Chroma collection {index.name}: {index.count()} training examples")

    program = AdaptRec.from_index(index, template="movies", selection="static", n_retrieve=10, m_select=3,
                                  mode="score")
    model = args.out / "tiny"
    if not (model / "config.json").is_file():
        build_tiny_model(data, model)  # = adaptrec model tiny --chat: a random micro Llama, offline
    lm = make_lm(f"hf:{model}")

    with dspy.context(lm=lm):
        pred = program(history_titles=HISTORY, candidate_titles=CANDIDATES)
    print(f"3. new user ({len(HISTORY)} movies): {len(pred.neighbor_user_ids)} similar users retrieved "
          f"(cosine {pred.neighbor_scores[0]:.2f}..{pred.neighbor_scores[-1]:.2f}), M=3 shown to the LM")
    for rank, title in enumerate(pred.ranked_titles, start=1):
        print(f"   {rank}. {title}")

    rows = splits["test"].select(range(min(args.limit, splits["test"].num_rows)))
    results = evaluate(program, rows, args.out / "runs" / "live-static", lm=lm, progress=False)
    metrics = "  ".join(f"{k}={m['value']:.3f}" for k, m in results.metrics.items())
    print(f"4. evaluated on {results.n} test users: {metrics}  (run folder {results.path})")


if __name__ == "__main__":
    main()
