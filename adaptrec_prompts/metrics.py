"""Metrics, one definition (DESIGN.md §4; eval/README.md states the same in prose).

Per example, with `ranking` = candidate item ids best first (length 1 for a generated answer, K in
score mode, empty when invalid) and one relevant item (the target):

- hit@k = 1 if the target is among the first k of the ranking, else 0 (an invalid output is a miss);
- ndcg@k = 1 / log2(1 + r) if the target is at rank r <= k, else 0 (single relevant item: IDCG = 1);
- valid = the output parsed to one candidate (generate) or a full ranking (score).

Over a run: HR@1, HR@5, NDCG@5 and ValidRatio are means over *all* scored examples; `HR@1|valid` (LLaRA's
convention) is hits / valid outputs. LM transport errors are not outputs: they are counted (`errors`) and
left out of every mean. Each figure carries a 95% percentile-bootstrap CI over examples.
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


def aggregate(records: Sequence[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """Aggregate per-example records ({"hit1","hit5","ndcg5","valid"}, plus "error") into run metrics.

    Returns:
        {"n", "errors", "metrics": {key: {"value", "ci_low", "ci_high"}}} with keys METRIC_KEYS.
        With no scored example every value is NaN (there is nothing to measure), never 0.
    """
    scored = [r for r in records if not r.get("error")]
    errors = len(records) - len(scored)
    n = len(scored)
    if n == 0:
        nan = {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
        return {"n": 0, "errors": errors, "metrics": {k: dict(nan) for k in METRIC_KEYS}}
    cols = {key: np.array([r[key] for r in scored], dtype=float) for key in ("hit1", "hit5", "ndcg5", "valid")}
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    out = {}
    for key, col in [("HR@1", "hit1"), ("HR@5", "hit5"), ("NDCG@5", "ndcg5"), ("ValidRatio", "valid")]:
        values = cols[col]
        out[key] = {"value": float(values.mean()), **dict(zip(("ci_low", "ci_high"), _ci(values[idx].mean(1))))}
    hits, valid = cols["hit1"], cols["valid"]
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = hits[idx].sum(1) / valid[idx].sum(1)
    value = float(hits.sum() / valid.sum()) if valid.sum() else float("nan")
    out["HR@1|valid"] = {"value": value, **dict(zip(("ci_low", "ci_high"), _ci(boot)))}
    return {"n": n, "errors": errors, "metrics": {k: out[k] for k in METRIC_KEYS}}


def paired_comparison(a: Sequence[dict], b: Sequence[dict], n_boot: int = 2000, seed: int = 0) -> dict:
    """Compare two runs on the same examples (matched by example_id; errors in either run are dropped).

    HR@1: difference b - a with a paired bootstrap CI and an exact two-sided McNemar test on the
    discordant pairs. NDCG@5: difference with a paired bootstrap CI and a sign-flip permutation p-value.
    """
    from scipy.stats import binomtest

    left = {r["example_id"]: r for r in a if not r.get("error")}
    right = {r["example_id"]: r for r in b if not r.get("error")}
    common = sorted(set(left) & set(right))
    if not common:
        raise ValueError("the two runs share no scored example: compare runs on the same split and data")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(common), size=(n_boot, len(common)))
    out = {"n": len(common), "only_in_a": len(set(left) - set(right)), "only_in_b": len(set(right) - set(left))}
    for key, col in [("HR@1", "hit1"), ("NDCG@5", "ndcg5")]:
        diff = np.array([right[e][col] - left[e][col] for e in common])
        lo, hi = _ci(diff[idx].mean(1))
        entry = {"a": float(np.mean([left[e][col] for e in common])),
                 "b": float(np.mean([right[e][col] for e in common])), "diff": float(diff.mean()),
                 "ci_low": lo, "ci_high": hi}
        if col == "hit1":
            b_only, a_only = int((diff > 0).sum()), int((diff < 0).sum())
            entry.update(test="McNemar exact", discordant=[a_only, b_only],
                         p_value=float(binomtest(b_only, a_only + b_only).pvalue) if a_only + b_only else 1.0)
        else:
            signs = rng.choice([-1.0, 1.0], size=(n_boot, len(diff)))
            null = np.abs((signs * diff).mean(1))
            entry.update(test="sign-flip permutation",
                         p_value=float((1 + (null >= abs(diff.mean()) - 1e-12).sum()) / (n_boot + 1)))
        out[key] = entry
    return out
