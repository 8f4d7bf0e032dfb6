"""Stage 1: sequence embedders, the Chroma user index, persisted neighbours and the live retriever."""
