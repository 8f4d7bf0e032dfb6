"""Stage 1, retrieval (above data, below the programs that show its users): who are the similar users?

- `embedders`: histories -> vectors (`CollabEmbedder`, `LMEmbedder`, `TextEmbedder`, `make_embedder`).
- `index`: the Chroma `UserIndex` of a prepared folder's training pool, with the leakage rules applied to
  every query (`open_index`, `UserIndex.open`, `NEW_USER`).
- `neighbors`: persisted neighbours, a copy of a prepared folder with neighbour columns (`build_neighbors`,
  `adaptrec index neighbors`) and the random-users control.
- `live`: `UserRetriever`, the same query per call for a history that is in no dataset.
"""

from adaptrec_prompts._lazy import exports

_LAZY = {
    "CollabEmbedder": "adaptrec_prompts.retrieval.embedders",
    "LMEmbedder": "adaptrec_prompts.retrieval.embedders",
    "TextEmbedder": "adaptrec_prompts.retrieval.embedders",
    "make_embedder": "adaptrec_prompts.retrieval.embedders",
    "UserIndex": "adaptrec_prompts.retrieval.index",
    "NEW_USER": "adaptrec_prompts.retrieval.index",
    "make_client": "adaptrec_prompts.retrieval.index",
    "open_index": "adaptrec_prompts.retrieval.index",
    "build_neighbors": "adaptrec_prompts.retrieval.neighbors",
    "UserRetriever": "adaptrec_prompts.retrieval.live",
}
__all__ = list(_LAZY)
__getattr__, __dir__ = exports(__name__, _LAZY)
