"""`adaptrec bench retrieval`: Chroma HNSW vs exact search, and Stage-1 retrieval quality.

Speed table, one row per (pool, method), each measured in a fresh child process (so peak RSS is its own):
build rate (seq/s), query latency single and batched (ms/query), recall@N against exact cosine top-N
(numpy), index size on disk, peak RSS. Pools: synthetic clustered vectors (dim 64: 256 centres drawn
N(0, I), each point = centre + N(0, 0.35^2 I), L2-normalized; queries from the same generator) and the
real `collab` embeddings of prepared folders (pool = train, queries = test_extended histories).

Quality table: on the valid split, how often the target item is among the N neighbours' next items and
among their histories (coverage@N), for the collab embedder versus N random training examples.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from adaptrec_prompts.retrieval.index import DEFAULT_HNSW, exact_top_k


def synthetic(n: int, dim: int = 64, seed: int = 0, centres: int = 256) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim))
    x = c[rng.integers(0, centres, size=n)] + 0.35 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _reset_peak_rss() -> None:
    # ru_maxrss survives fork+exec, so a child would report its parent's peak; Linux lets a process
    # reset its high-water mark (clear_refs 5) and then VmHWM is its own.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(method: str, pool, queries, n: int, hnsw: dict, out) -> None:
    """Child process body: build, query, measure; put a result dict on `out`.

    `pool`/`queries` are arrays, or ("synthetic", size, seed) specs generated here (keeps the parent small).
    """
    _reset_peak_rss()
    pool = synthetic(pool[1], seed=pool[2]) if isinstance(pool, tuple) else pool
    queries = synthetic(queries[1], seed=queries[2]) if isinstance(queries, tuple) else queries
    row = {"method": method, "pool": len(pool)}
    got: list = []
    if method == "exact":
        started = time.perf_counter()
        for q in queries[:200]:
            exact_top_k(pool, q[None], n)
        row["single_ms"] = (time.perf_counter() - started) / 200 * 1000
        started = time.perf_counter()
        exact_top_k(pool, queries, n, batch_size=256)
        row.update(batched_ms=(time.perf_counter() - started) / len(queries) * 1000, build_per_s=float("inf"),
                   disk_mb=pool.nbytes / 1e6)
    else:
        import chromadb

        folder = Path(tempfile.mkdtemp(prefix="bench-chroma-"))
        try:
            client = chromadb.PersistentClient(path=str(folder), settings=chromadb.Settings(anonymized_telemetry=False))
            col = client.create_collection("bench", configuration={"hnsw": hnsw})
            batch = client.get_max_batch_size()
            started = time.perf_counter()
            for s in range(0, len(pool), batch):
                col.add(ids=[str(i) for i in range(s, min(s + batch, len(pool)))], embeddings=pool[s : s + batch])
            row["build_per_s"] = len(pool) / (time.perf_counter() - started)
            col.query(query_embeddings=queries[:1], n_results=n, include=["distances"])  # warm
            started = time.perf_counter()
            for q in queries[:200]:
                col.query(query_embeddings=q[None], n_results=n, include=["distances"])
            row["single_ms"] = (time.perf_counter() - started) / 200 * 1000
            started = time.perf_counter()
            for s in range(0, len(queries), 256):
                got += col.query(query_embeddings=queries[s : s + 256], n_results=n, include=["distances"])["ids"]
            row["batched_ms"] = (time.perf_counter() - started) / len(queries) * 1000
            row["disk_mb"] = _dir_size(folder) / 1e6
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    row["peak_rss_mb"] = _peak_rss_mb()  # before the ground truth below, which is not part of the method
    if method == "exact":
        row["recall"] = 1.0
    else:
        truth, _ = exact_top_k(pool, queries, n, batch_size=32)
        hits = [len({int(i) for i in g} & set(t.tolist())) for g, t in zip(got, truth, strict=True)]
        row["recall"] = float(np.mean(hits)) / n
    out.put(row)


def measure(method: str, pool, queries, n: int = 10, hnsw: dict | None = None) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_run, args=(method, pool, queries, n, {**DEFAULT_HNSW, **(hnsw or {})}, out))
    proc.start()
    row = out.get()
    proc.join()
    return row


def coverage(data_dir: str | Path, n: int = 10, seed: int = 0) -> dict:
    """coverage@N on the valid split (exact search): does the target appear among the next items / histories of
    the N Stage-1 users (collab; distinct users, each with their best allowed window) vs N random users (the
    `RandomUsers` control: uniform over the pool's users under the same rules)?"""
    from adaptrec_prompts.data.prepare import load_prepared
    from adaptrec_prompts.data.schema import column
    from adaptrec_prompts.retrieval.embedders import CollabEmbedder, training_sequences
    from adaptrec_prompts.retrieval.neighbors import RandomUsers

    ddict = load_prepared(data_dir)
    train, valid = ddict["train"], ddict["valid"]
    emb = CollabEmbedder().fit(training_sequences(train))
    pool = emb.embed(column(train, "history_item_ids"))
    t_ids, t_users, t_times = column(train, "example_id"), column(train, "user_id"), column(train, "timestamp")
    t_next, t_hist = column(train, "target_item_id"), column(train, "history_item_ids")
    row_of = {e: j for j, e in enumerate(t_ids)}
    randoms = RandomUsers({e: (u, x, t) for e, u, x, t in zip(t_ids, t_users, t_next, t_times, strict=True)}, seed)
    queries = emb.embed(column(valid, "history_item_ids"))
    idx, _ = exact_top_k(pool, queries, min(len(pool), 100 * n))
    result = {"collab": [0, 0], "random": [0, 0]}
    rows = list(zip(column(valid, "example_id"), column(valid, "user_id"), column(valid, "timestamp"),
                    column(valid, "target_item_id"), strict=True))
    for q, (example_id, user, ts, target) in enumerate(rows):
        best: dict[str, int] = {}
        for j in idx[q]:
            if t_users[j] != user and (ts is None or t_times[j] is None or t_times[j] < ts):
                best.setdefault(t_users[j], int(j))
            if len(best) == n:
                break
        picks = {"collab": list(best.values()), "random": [row_of[e] for e in randoms.draw(example_id, user, ts, n)]}
        for name, chosen in picks.items():
            result[name][0] += any(t_next[j] == target for j in chosen)
            result[name][1] += any(target in t_hist[j] for j in chosen)
    return {name: {"next_item": a / len(rows), "history": b / len(rows), "n_queries": len(rows)}
            for name, (a, b) in result.items()}
