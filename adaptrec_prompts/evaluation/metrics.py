"""Metrics, one definition (docs/design.md, Metrics and statistics; eval/README.md states the same in prose).

Per example, with `ranking` = candidate item ids best first (length 1 for a generated answer, K in
score mode, empty when invalid) and one relevant item (the target):

- hit@k = 1 if the target is among the first k of the ranking, else 0 (an invalid output is a miss);
- ndcg@k = 1 / log2(1 + r) if the target is at rank r <= k, else 0 (single relevant item: IDCG = 1);
- valid = the output parsed to one candidate (generate) or a full ranking (score).

Over a run: HR@1, HR@5, NDCG@5 and ValidRatio are means over *all* scored examples; `HR@1|valid` (LLaRA's
convention) is hits / valid outputs. LM transport errors are not outputs: they are counted (`errors`) and
left out of every mean. Each figure carries a 95% percentile-bootstrap CI. When a user has several rows
(`test_extended`, LLaRA LastFM windows), rows of one user are not independent: the bootstrap resamples
*users* with all their rows (cluster bootstrap), and paired tests flip signs per user; with one row per
user this is the ordinary bootstrap over examples (`resampling` in the output says which).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

METRIC_KEYS = ("HR@1", "HR@1|valid", "HR@5", "NDCG@5", "ValidRatio")
RESULTS_SCHEMA_VERSION = 1


def hit_at_k(ranking: Sequence[int], target: int, k: int) -> float:
    """1.0 if `target` is in `ranking[:k]`, else 0.0.

    Example:
        >>> hit_at_k([5, 3, 9], 3, 1), hit_at_k([5, 3, 9], 3, 2)
        (0.0, 1.0)
    """
    return float(target in list(ranking)[:k])


def ndcg_at_k(ranking: Sequence[int], target: int, k: int) -> float:
    """1 / log2(1 + rank) when the target is at 1-based rank <= k, else 0 (one relevant item, IDCG = 1).

    Example:
        >>> round(ndcg_at_k([5, 3, 9], 3, 5), 4)
        0.6309
    """
    ranking = list(ranking)[:k]
    return 1.0 / math.log2(2 + ranking.index(target)) if target in ranking else 0.0


def example_metrics(ranking: Sequence[int], target: int, valid: bool) -> dict[str, float]:
    """The per-example values every aggregate is a mean of."""
    return {"hit1": hit_at_k(ranking, target, 1), "hit5": hit_at_k(ranking, target, 5),
            "ndcg5": ndcg_at_k(ranking, target, 5), "valid": float(valid)}


def _ci(samples: np.ndarray) -> tuple[float, float]:
    if np.isnan(samples).all():
        return float("nan"), float("nan")
    lo, hi = np.nanpercentile(samples, [2.5, 97.5])
    return float(lo), float(hi)


def clusters(records: Sequence[dict]) -> tuple[np.ndarray, dict]:
    """(cluster index per record, description): users when every record names one and some user has
    several rows, else every record its own cluster (also when no record names a user: logs written before
    user ids were logged). Some records with and some without a user id is an error: the unit would be a guess.
    """
    users = [r.get("user_id") for r in records]
    if any(users) and not all(users):
        raise ValueError(f"{sum(1 for u in users if not u)} of {len(users)} records have no user_id while the others "
                         "do (a log resumed across versions?): re-run the examples without one into a fresh folder")
    if all(users) and len(set(users)) < len(users):
        order = {u: k for k, u in enumerate(dict.fromkeys(users))}
        return np.array([order[u] for u in users]), {"unit": "user", "clusters": len(order)}
    return np.arange(len(records)), {"unit": "example", "clusters": len(records)}


def _boot_weights(n_clusters: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_clusters) counts of each cluster in each bootstrap resample."""
    idx = rng.integers(0, n_clusters, size=(n_boot, n_clusters))
    weights = np.zeros((n_boot, n_clusters))
    np.add.at(weights, (np.arange(n_boot)[:, None], idx), 1.0)
    return weights


def _sums(values: np.ndarray, cluster: np.ndarray, n_clusters: int) -> np.ndarray:
    return np.bincount(cluster, weights=values, minlength=n_clusters)


def aggregate(records: Sequence[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """Aggregate per-example records ({"hit1","hit5","ndcg5","valid"}, plus "error", "user_id") into run metrics.

    Returns:
        {"n", "errors", "resampling", "metrics": {key: {"value", "ci_low", "ci_high"}}} with keys METRIC_KEYS.
        With no scored example every value is NaN (there is nothing to measure), never 0.
    """
    scored = [r for r in records if not r.get("error")]
    errors = len(records) - len(scored)
    n = len(scored)
    if n == 0:
        nan = {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
        return {"n": 0, "errors": errors, "resampling": {"unit": "example", "clusters": 0},
                "metrics": {k: dict(nan) for k in METRIC_KEYS}}
    cluster, resampling = clusters(scored)
    k = resampling["clusters"]
    weights = _boot_weights(k, n_boot, np.random.default_rng(seed))
    sizes = weights @ _sums(np.ones(n), cluster, k)
    cols = {key: np.array([r[key] for r in scored], dtype=float) for key in ("hit1", "hit5", "ndcg5", "valid")}
    sums = {key: _sums(col, cluster, k) for key, col in cols.items()}
    out = {}
    for key, col in [("HR@1", "hit1"), ("HR@5", "hit5"), ("NDCG@5", "ndcg5"), ("ValidRatio", "valid")]:
        out[key] = {"value": float(cols[col].mean()),
                    **dict(zip(("ci_low", "ci_high"), _ci(weights @ sums[col] / sizes)))}
    hits, valid = cols["hit1"], cols["valid"]
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (weights @ sums["hit1"]) / (weights @ sums["valid"])
    value = float(hits.sum() / valid.sum()) if valid.sum() else float("nan")
    out["HR@1|valid"] = {"value": value, **dict(zip(("ci_low", "ci_high"), _ci(boot)))}
    return {"n": n, "errors": errors, "resampling": resampling, "metrics": {k: out[k] for k in METRIC_KEYS}}


def paired_comparison(a: Sequence[dict], b: Sequence[dict], n_boot: int = 2000, seed: int = 0) -> dict:
    """Compare two runs on the same examples (matched by example_id; errors in either run are dropped).

    Both runs must have the same target and candidates for every shared example id (else ValueError: the
    runs were made on different data). HR@1 and NDCG@5: difference b - a with a paired bootstrap CI. With
    one row per user, HR@1 gets an exact two-sided McNemar test on the discordant pairs and NDCG@5 a sign-flip
    permutation test; when users have several rows, the bootstrap resamples users and both p-values come
    from flipping the sign of each user's summed difference (McNemar assumes independent pairs).
    """
    from scipy.stats import binomtest

    left = {r["example_id"]: r for r in a if not r.get("error")}
    right = {r["example_id"]: r for r in b if not r.get("error")}
    common = sorted(set(left) & set(right))
    if not common:
        raise ValueError("the two runs share no scored example: compare runs on the same split and data")
    for key in ("target_item_id", "candidate_item_ids", "user_id"):
        differ = [e for e in common if left[e].get(key) != right[e].get(key)]
        if differ:
            raise ValueError(f"the two runs disagree on {key} for {len(differ)} of {len(common)} shared examples "
                             f"(first: {differ[0]}): they were made on different prepared data; compare runs on "
                             "the same data folder")
    cluster, resampling = clusters([left[e] for e in common])
    k = resampling["clusters"]
    rng = np.random.default_rng(seed)
    weights = _boot_weights(k, n_boot, rng)
    sizes = weights @ _sums(np.ones(len(common)), cluster, k)
    out = {"n": len(common), "only_in_a": len(set(left) - set(right)), "only_in_b": len(set(right) - set(left)),
           "resampling": resampling}
    signs = rng.choice([-1.0, 1.0], size=(n_boot, k))
    for key, col in [("HR@1", "hit1"), ("NDCG@5", "ndcg5")]:
        diff = np.array([right[e][col] - left[e][col] for e in common])
        per_cluster = _sums(diff, cluster, k)
        lo, hi = _ci(weights @ per_cluster / sizes)
        entry = {"a": float(np.mean([left[e][col] for e in common])),
                 "b": float(np.mean([right[e][col] for e in common])), "diff": float(diff.mean()),
                 "ci_low": lo, "ci_high": hi}
        null = np.abs(signs @ per_cluster) / len(common)
        flip_p = float((1 + (null >= abs(diff.mean()) - 1e-12).sum()) / (n_boot + 1))
        if col == "hit1":
            b_only, a_only = int((diff > 0).sum()), int((diff < 0).sum())
            entry["discordant"] = [a_only, b_only]
            if resampling["unit"] == "example":
                entry.update(test="McNemar exact",
                             p_value=float(binomtest(b_only, a_only + b_only).pvalue) if a_only + b_only else 1.0)
            else:
                entry.update(test="sign-flip permutation by user", p_value=flip_p)
        else:
            entry.update(test="sign-flip permutation" + (" by user" if resampling["unit"] == "user" else ""),
                         p_value=flip_p)
        out[key] = entry
    return out
