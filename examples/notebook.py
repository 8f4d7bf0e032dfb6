# %% [markdown]
# # AdaptRec from Python, end to end (a notebook in jupytext "percent" format)
#
# Every step is a library call, no command line: prepare MovieLens-100K, open the Chroma user index, write
# Stage-1 neighbours, build a tiny local model, recommend live for a typed history (and see whom the program
# showed the LM), evaluate on 20 test users into a `Results` with `.to_pandas()`, save the program, load it
# and get the same answer. Run it as a script (`python examples/notebook.py`) or open it in Jupyter with
# jupytext. Settings come from the environment:
#
# - `ADAPTREC_DATA`: the folder holding `ml-100k/` (default `../shared/data`);
# - `NOTEBOOK_OUT`: where everything is written (default `artifacts/notebook`); whatever is already there
#   (prepared data, neighbours, model, finished examples) is reused, so a second run is quick;
# - `NOTEBOOK_LIMIT`: test users evaluated (default 20); `NOTEBOOK_POOL`: training examples indexed
#   (default 1000: a sampled pool keeps it quick; 0 indexes all 80k).
#
# The model is a randomly initialised micro Llama: the point is the plumbing, not the rankings. For a real
# model use `make_lm("hf:PATH")`, `make_lm("gemma-3-270m")` or `make_lm("openai/gpt-4o")` (mode="generate").

# %%
import os
from pathlib import Path

import dspy

from adaptrec_prompts import (AdaptRec, RunConfig, UserIndex, build_neighbors, build_tiny_model, load_prepared,
                              load_program, make_lm, prepare_dataset, run_eval, save_program)

RAW = Path(os.environ.get("ADAPTREC_DATA", "../shared/data")) / "ml-100k"
OUT = Path(os.environ.get("NOTEBOOK_OUT", "artifacts/notebook"))
LIMIT = int(os.environ.get("NOTEBOOK_LIMIT", "20"))
POOL = int(os.environ.get("NOTEBOOK_POOL", "1000")) or None

# %% [markdown]
# ## 1. Frozen splits (`adaptrec data prepare`)

# %%
data = OUT / "ml-100k"
if not (data / "manifest.json").is_file():
    prepare_dataset("ml-100k", data, raw_dir=RAW)
splits = load_prepared(data)
print("1. prepared", data, {name: split.num_rows for name, split in splits.items()})

# %% [markdown]
# ## 2. The Chroma user index of the training pool (`adaptrec index build`)

# %%
index = UserIndex.open(OUT / "chroma", data=data, pool_size=POOL, progress=False)
print("2.", index)

# %% [markdown]
# ## 3. Stage-1 neighbours persisted for the test split (`adaptrec index neighbors`)

# %%
neighbours = OUT / "ml-100k-nb"
if not (neighbours / "manifest.json").is_file():
    build_neighbors(data, neighbours, index, n=10, splits=["test"], progress=False)
print("3. neighbours in", neighbours)

# %% [markdown]
# ## 4. A tiny local model (`adaptrec model tiny`)

# %%
model = OUT / "tiny"
if not (model / "config.json").is_file():
    build_tiny_model(data, model)
lm = make_lm(f"hf:{model}")
print("4. model", model)

# %% [markdown]
# ## 5. A program on the live index, and a recommendation for a history typed in
#
# Stage 1 retrieves the 10 most similar training users of this history, the static selection shows the LM
# the 3 most similar (`selected_users`), and Stage 3 scores every candidate (score mode).

# %%
program = AdaptRec.from_index(index, template="movies", selection="static", n_retrieve=10, m_select=3, mode="score")
history = ["Star Wars (1977)", "Raiders of the Lost Ark (1981)", "Return of the Jedi (1983)", "Fargo (1996)",
           "Pulp Fiction (1994)"]
candidates = ["The Empire Strikes Back (1980)", "Scream (1996)", "Liar Liar (1997)", "Titanic (1997)",
              "Contact (1997)"]
with dspy.context(lm=lm):
    pred = program(history_titles=history, candidate_titles=candidates)
print(f"5. top: {pred.top_title}; ranking: {pred.ranked_titles}")
for user in pred.selected_users:
    print(f"   shown: user {user['user_id']} ({user['example_id']}) watched {len(user['history_titles'])} movies, "
          f"last {user['history_titles'][-1]!r}, then {user['next_title']!r}")
program.inspect_history(n=1)  # the scored prompt, and every candidate with its score

# %% [markdown]
# ## 6. Evaluate on the first test users (`adaptrec eval`): a `Results`
#
# Once by name on the persisted neighbours, once as the live program object; both see the same neighbours
# (each row's own user and later windows are excluded either way), so both score the same.

# %%
persisted = run_eval(RunConfig(data=neighbours, out=OUT / "runs" / "static-persisted", program="static",
                               lm=f"hf:{model}", m=3, limit=LIMIT), lm=lm, progress=False)
live = run_eval(RunConfig(data=data, out=OUT / "runs" / "static-live", program=program, lm=f"hf:{model}",
                          limit=LIMIT), lm=lm, progress=False)
print(f"6. {persisted.n} test users: HR@1 {persisted.metrics['HR@1']['value']:.3f} (persisted neighbours), "
      f"{live.metrics['HR@1']['value']:.3f} (live)")
table = live.to_pandas()
print(table[["example_id", "top_title", "hit1", "ndcg5"]].head().to_string(index=False))

# %% [markdown]
# ## 7. Save, load, same answer
#
# `save_program` writes the configuration and DSPy state (instructions, demos), never the index or a model;
# `AdaptRec.from_index(index, program=load_program(path))` serves the saved program live again.

# %%
path = save_program(program, OUT / "programs" / "static.json")
again = AdaptRec.from_index(index, program=load_program(path))
with dspy.context(lm=lm):
    pred_again = again(history_titles=history, candidate_titles=candidates)
same = pred_again.ranked_titles == pred.ranked_titles and pred_again.scores == pred.scores
print(f"7. saved {path}; loaded: same answer: {same}")
