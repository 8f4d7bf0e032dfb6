"""adaptrec-prompts: AdaptRec (arXiv 2504.08786) on DSPy, Chroma and TRL.

`import adaptrec_prompts` stays light: it never imports torch, chromadb or trl. The public names below
are resolved on first use (PEP 562 `__getattr__`), each from the module that defines it, so that
`from adaptrec_prompts import AdaptRec` imports DSPy but not Chroma, and `UserIndex.open` imports
chromadb only when it opens a client.

    from adaptrec_prompts import (AdaptRec, RunConfig, UserIndex, build_neighbors, build_tiny_model, make_lm,
                                  prepare_dataset, run_eval)
    prepare_dataset("ml-100k", "artifacts/ml-100k", raw_dir="../shared/data/ml-100k")
    index = UserIndex.open("artifacts/chroma", data="artifacts/ml-100k")
    build_neighbors("artifacts/ml-100k", "artifacts/ml-100k-nb", index, splits=["test"])
    lm = make_lm(f"hf:{build_tiny_model('artifacts/ml-100k', 'artifacts/models/tiny')}")
    program = AdaptRec.from_index(index, template="movies", selection="static", m_select=5, mode="score")
    with dspy.context(lm=lm):
        pred = program(history_titles=[...], candidate_titles=[...])
        pred.top_title, pred.ranked_titles, pred.selected_users
    results = run_eval(RunConfig(data="artifacts/ml-100k-nb", out="runs/static", program="static",
                                 lm="hf:artifacts/models/tiny", limit=20))  # = adaptrec eval
    results.metrics["HR@1"], results.to_pandas()

(examples/notebook.py runs the whole path, save and load included; examples/quickstart.py a shorter tour.)

The subpackages follow the data flow, each importing only those before it (docs/design.md, Package map):
`data` -> `retrieval` (Stage 1) -> `programs` (Stages 2-3) -> `backends` -> `evaluation` -> `finetune` ->
`cli`, `experiments`, `benchmarks`; `errors` and `utils` serve them all. The module paths of 0.1
(`adaptrec_prompts.modules`, ...) still import, with a DeprecationWarning (`_compat`, CHANGELOG.md).
"""

from __future__ import annotations

from adaptrec_prompts import _compat
from adaptrec_prompts._lazy import exports
from adaptrec_prompts.errors import (AdaptRecError, ConfigError, DataError, DownloadError, IncompleteRunError,
                                     Interrupted, LeakageError, OutputExistsError, RunInUseError, UnknownItemError,
                                     UnsafePickleError)

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access)
_LAZY = {
    "prepare_dataset": "adaptrec_prompts.data.prepare",
    "load_prepared": "adaptrec_prompts.data.prepare",
    "UserIndex": "adaptrec_prompts.retrieval.index",
    "NEW_USER": "adaptrec_prompts.retrieval.index",
    "UserRetriever": "adaptrec_prompts.retrieval.live",
    "build_neighbors": "adaptrec_prompts.retrieval.neighbors",
    "AdaptRec": "adaptrec_prompts.programs.adaptrec",
    "UserSelector": "adaptrec_prompts.programs.selector",
    "NextItemRecommender": "adaptrec_prompts.programs.recommender",
    "save_program": "adaptrec_prompts.programs.saving",
    "load_program": "adaptrec_prompts.programs.saving",
    "make_lm": "adaptrec_prompts.backends.api",
    "build_tiny_model": "adaptrec_prompts.backends.tiny",
    "evaluate": "adaptrec_prompts.evaluation.harness",
    "RunConfig": "adaptrec_prompts.evaluation.runs",
    "run_eval": "adaptrec_prompts.evaluation.runs",
    "Results": "adaptrec_prompts.evaluation.results",
}

__all__ = [
    *_LAZY,
    "AdaptRecError",
    "ConfigError",
    "DataError",
    "DownloadError",
    "IncompleteRunError",
    "Interrupted",
    "LeakageError",
    "OutputExistsError",
    "RunInUseError",
    "UnknownItemError",
    "UnsafePickleError",
    "__version__",
]

__getattr__, __dir__ = exports(__name__, _LAZY)
_compat.install()  # the 0.1 module paths (adaptrec_prompts.modules, ...) still import: CHANGELOG.md
