"""Sequence embedders for Stage 1: histories (item-id lists) in, float32 L2-normalized vectors out.

- `CollabEmbedder` (default): item vectors from the *training* sequences only: a PPMI matrix of item
  co-occurrence within a window, factorized by truncated SVD; a history is the recency-weighted mean of
  its item vectors (weight decay**age, newest = 1). Seconds on ML-100K, no downloads.
- `LMEmbedder` (the paper's): mean-pooled last hidden state of a Hugging Face causal LM over the rendered
  history text (torch/transformers imported when built).
- `TextEmbedder`: a sentence-transformers model given by path (optional extra, imported lazily).

Each has an `id` naming the method and every parameter that changes its vectors; the Chroma collection
name is derived from it, so a changed embedder never reuses a stale collection. `make_embedder(kind, data_dir)`
builds one by name for a prepared folder (`--embedder`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from adaptrec_prompts.data.prepare import load_items, load_manifest, load_prepared
from adaptrec_prompts.data.render import manifest_template
from adaptrec_prompts.data.schema import column
from adaptrec_prompts.errors import ConfigError

EMBEDDERS = ("collab", "lm", "text")


class Embedder(Protocol):
    id: str

    def embed(self, histories: Sequence[Sequence[int]]) -> np.ndarray: ...


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms == 0, 1, norms)).astype(np.float32)


def _short_hash(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:10]


def embed_all(embedder: Embedder, histories: Sequence[Sequence[int]], *, desc: str = "embed",
              progress: bool = False) -> np.ndarray:
    """`embedder.embed(histories)` in chunks behind a progress bar (`progress.bar`: histories, rate, time left).

    Any `Embedder` works (only `embed` is called). The chunks are the embedder's own batches
    (`batch_size`, when it has one) or 1,024 histories, and they are the same whether or not a bar shows,
    so the vectors never depend on the terminal: exactly those of one call for the collab embedder
    (each history on its own) and the lm embedder (the same batches); a sentence-transformers model pads
    each chunk on its own, which changes its vectors within float rounding only.
    """
    from adaptrec_prompts.utils.progress import bar

    if not len(histories):
        return embedder.embed(histories)
    size = int(getattr(embedder, "batch_size", 0) or 1024)
    parts = []
    with bar(desc=desc, total=len(histories), unit="history", progress=progress) as shown:
        for start in range(0, len(histories), size):
            chunk = histories[start : start + size]
            parts.append(embedder.embed(chunk))
            shown.update(len(chunk))
    return np.concatenate(parts)


def training_sequences(train) -> list[list[int]]:
    """Training sequences from a prepared train split.

    With user ids, each user's full training sequence is rebuilt from their windows (the first window's
    history, then every target in position order); without (LLaRA import), each window is one sequence.
    """
    users, positions = column(train, "user_id"), column(train, "position")
    histories, targets = column(train, "history_item_ids"), column(train, "target_item_id")
    if any(u is None for u in users):
        return [list(h) + [t] for h, t in zip(histories, targets, strict=True)]
    by_user: dict[str, list[tuple[int, list[int], int]]] = {}
    for user, pos, hist, target in zip(users, positions, histories, targets, strict=True):
        by_user.setdefault(user, []).append((pos, hist, target))
    sequences = []
    for user in sorted(by_user):
        rows = sorted(by_user[user], key=lambda r: r[0])
        sequences.append(list(rows[0][1]) + [target for _pos, _hist, target in rows])
    return sequences


class CollabEmbedder:
    """PPMI + truncated SVD item vectors, recency-weighted mean per history.

    Args:
        dim: vector size.
        window: co-occurrence window (items at most `window` positions apart co-occur).
        decay: recency weight base; the newest item weighs 1, the one before it `decay`, and so on.
        seed: ARPACK start vector seed (the SVD is deterministic given it).
    """

    kind = "collab"

    def __init__(self, dim: int = 64, window: int = 5, decay: float = 0.8, seed: int = 0):
        self.dim, self.window, self.decay, self.seed = dim, window, decay, seed
        self.item_index: dict[int, int] = {}
        self.vectors = np.zeros((0, dim), dtype=np.float32)
        self.fit_hash = ""

    @property
    def id(self) -> str:
        if not self.fit_hash:
            raise ConfigError("CollabEmbedder has no item vectors yet: call fit(training_sequences(train)) first")
        return f"collab-ppmi-svd-d{self.dim}-w{self.window}-r{self.decay}-s{self.seed}-fit{self.fit_hash}"

    def fit(self, sequences: Sequence[Sequence[int]]) -> CollabEmbedder:
        from scipy import sparse
        from scipy.sparse.linalg import svds

        items = sorted({i for seq in sequences for i in seq})
        self.item_index = {item: k for k, item in enumerate(items)}
        rows, cols = [], []
        for seq in sequences:
            idx = [self.item_index[i] for i in seq]
            for gap in range(1, self.window + 1):
                rows.extend(idx[:-gap])
                cols.extend(idx[gap:])
        n = len(items)
        counts = sparse.coo_matrix((np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=(n, n)).tocsr()
        counts = counts + counts.T
        total = counts.sum()
        marginal = np.asarray(counts.sum(axis=1)).ravel()
        coo = counts.tocoo()
        pmi = np.log(coo.data * total / (marginal[coo.row] * marginal[coo.col]))
        keep = pmi > 0
        ppmi = sparse.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=(n, n))
        k = min(self.dim, n - 2)
        v0 = np.random.default_rng(self.seed).standard_normal(n)
        u, s, _vt = svds(ppmi, k=k, v0=v0)
        order = np.argsort(-s)
        vectors = u[:, order] * np.sqrt(s[order])
        if k < self.dim:
            vectors = np.hstack([vectors, np.zeros((n, self.dim - k))])
        self.vectors = l2_normalize(vectors)
        self.fit_hash = _short_hash([list(s) for s in sequences])
        return self

    def embed(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        if not self.item_index:
            self.id  # noqa: B018 - raises the "call fit first" error
        out = np.zeros((len(histories), self.dim), dtype=np.float32)
        for row, history in enumerate(histories):
            known = [(age, self.item_index[i]) for age, i in enumerate(reversed(history)) if i in self.item_index]
            if known:
                weights = np.array([self.decay**age for age, _ in known], dtype=np.float32)
                out[row] = weights @ self.vectors[[k for _, k in known]]
        return l2_normalize(out)

    def save(self, path: str | Path) -> None:
        np.savez(path, items=np.array(list(self.item_index), dtype=np.int64), vectors=self.vectors,
                 params=np.array([self.dim, self.window, self.decay, self.seed]), fit_hash=np.array(self.fit_hash))

    @classmethod
    def load(cls, path: str | Path) -> CollabEmbedder:
        data = np.load(path)
        dim, window, decay, seed = data["params"].tolist()
        emb = cls(int(dim), int(window), float(decay), int(seed))
        emb.item_index = {int(i): k for k, i in enumerate(data["items"])}
        emb.vectors, emb.fit_hash = data["vectors"], str(data["fit_hash"])
        return emb


class LMEmbedder:
    """Mean-pooled last hidden state of a local causal LM over the rendered history (the paper's Stage 1).

    Args:
        model_path: local transformers model folder.
        titles: item id -> title (the prepared folder's items.jsonl).
        render: history titles -> text (e.g. `Template.render_history`).
        batch_size: histories per forward pass.
        device: where the model runs (`devices`: cpu, cuda, cuda:N, mps, auto). Not part of `id`: the
            vectors are the same model's, up to float rounding.
    """

    kind = "lm"

    def __init__(self, model_path: str | Path, titles: dict[int, str], render, batch_size: int = 16,
                 dtype: str = "float32", device: str = "cpu"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from adaptrec_prompts.utils.devices import resolve_device

        self.device = resolve_device(device)  # before loading: a GPU torch cannot see fails at once
        self.model_path = str(model_path)
        self.titles, self.render, self.batch_size = titles, render, batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        # Load the causal LM and keep its decoder: a checkpoint with tied weights may store the embedding
        # only as lm_head.weight (the Gemma dense copy does), which AutoModel would leave uninitialized.
        causal = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=getattr(torch, dtype))
        self.model = causal.base_model.to(self.device).eval()
        config_hash = _short_hash(self.model.config.to_dict())
        self.id = f"lm-{Path(self.model_path).name}-{config_hash}-{_short_hash(render(['x', 'y']))}"

    def embed(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        import torch

        texts = [self.render([self.titles[i] for i in h]) for h in histories]
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[start : start + self.batch_size], return_tensors="pt",
                                       padding=True).to(self.device)
                hidden = self.model(**batch).last_hidden_state  # (B, T, H)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                out.append(((hidden * mask).sum(1) / mask.sum(1)).float().cpu().numpy())
        return l2_normalize(np.concatenate(out) if out else np.zeros((0, 1), dtype=np.float32))


class TextEmbedder:
    """A sentence-transformers model (by local path) over the rendered history text; `device` as for
    `LMEmbedder`."""

    kind = "text"

    def __init__(self, model_path: str | Path, titles: dict[int, str], render, batch_size: int = 64,
                 device: str = "cpu"):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigError("the text embedder needs sentence-transformers: pip install -e '.[text]'") from None
        from adaptrec_prompts.utils.devices import resolve_device

        self.model = SentenceTransformer(str(model_path), device=resolve_device(device))
        self.titles, self.render, self.batch_size = titles, render, batch_size
        self.id = f"text-{Path(model_path).name}-{_short_hash(render(['x', 'y']))}"

    def embed(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        texts = [self.render([self.titles[i] for i in h]) for h in histories]
        return l2_normalize(np.asarray(self.model.encode(texts, batch_size=self.batch_size), dtype=np.float32))


def make_embedder(kind: str, data_dir: str | Path, model_path: str | Path | None = None,
                  device: str = "cpu") -> Embedder:
    """Build the embedder `kind` for a prepared folder (collab is fitted on its train split); `device`: where
    the lm/text embedders' model runs (`devices`; the collab embedder has no model)."""
    if kind not in EMBEDDERS:
        raise ConfigError(f"unknown embedder {kind!r}; valid: {', '.join(EMBEDDERS)}")
    if kind == "collab":
        return CollabEmbedder().fit(training_sequences(load_prepared(data_dir)["train"]))
    if model_path is None:
        raise ConfigError(f"the {kind} embedder needs --embed-model PATH (a local model folder)")
    template = manifest_template(load_manifest(data_dir))
    cls = LMEmbedder if kind == "lm" else TextEmbedder
    return cls(model_path, load_items(data_dir), template.render_history, device=device)
