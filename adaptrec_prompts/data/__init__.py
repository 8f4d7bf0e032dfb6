"""Data, the first layer: raw files in, frozen example splits out (docs/protocol.md).

- Raw-file loaders, one module per format (`movielens`, `lastfm`, `goodreads`, `llara`), each returning
  canonical `Interactions` (`interactions`). `LOADERS` maps a dataset name to its loader (a literal dict,
  no registry); `download` fetches the archives that may be fetched.
- `protocol`: the user split, example windows and frozen candidates; `schema`: the splits' columns.
- `prepare`: prepared folders (`prepare_dataset`, `load_prepared`, manifests, hashes, the output lock).
- `render`: a domain's wording (`Template`, templates/*.toml), what prompts and Stage-1 text embedders render.
- `fidelity`: how our MovieLens protocol relates to LLaRA's released rows.
"""

from adaptrec_prompts._lazy import exports
from adaptrec_prompts.data.goodreads import load_goodreads
from adaptrec_prompts.data.interactions import Interactions, make_unique_titles, normalize_movie_title
from adaptrec_prompts.data.lastfm import load_lastfm
from adaptrec_prompts.data.llara import RestrictedUnpickler, load_llara
from adaptrec_prompts.data.movielens import load_movielens

LOADERS = {"ml-100k": load_movielens, "lastfm": load_lastfm, "goodreads": load_goodreads}
DATASET_NAMES = (*LOADERS, "llara")

# imported on first use (datasets, pydantic): the loaders above need neither
_LAZY = {
    "prepare_dataset": "adaptrec_prompts.data.prepare",
    "load_prepared": "adaptrec_prompts.data.prepare",
    "load_manifest": "adaptrec_prompts.data.prepare",
    "load_items": "adaptrec_prompts.data.prepare",
    "ProtocolConfig": "adaptrec_prompts.data.protocol",
    "Template": "adaptrec_prompts.data.render",
    "load_template": "adaptrec_prompts.data.render",
}

__all__ = [
    "DATASET_NAMES",
    "LOADERS",
    "Interactions",
    "RestrictedUnpickler",
    "load_goodreads",
    "load_lastfm",
    "load_llara",
    "load_movielens",
    "make_unique_titles",
    "normalize_movie_title",
    *_LAZY,
]
__getattr__, __dir__ = exports(__name__, _LAZY)
