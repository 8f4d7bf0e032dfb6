"""Raw-file loaders. `LOADERS` maps a dataset name to its loader (a literal dict, no registry)."""

from adaptrec_prompts.data.goodreads import load_goodreads
from adaptrec_prompts.data.interactions import Interactions, make_unique_titles, normalize_movie_title
from adaptrec_prompts.data.lastfm import load_lastfm
from adaptrec_prompts.data.llara import RestrictedUnpickler, load_llara
from adaptrec_prompts.data.movielens import load_movielens

LOADERS = {"ml-100k": load_movielens, "lastfm": load_lastfm, "goodreads": load_goodreads}
DATASET_NAMES = (*LOADERS, "llara")

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
]
