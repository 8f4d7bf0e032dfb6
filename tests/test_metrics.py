import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adaptrec_prompts.evaluation.metrics import METRIC_KEYS, aggregate, example_metrics, hit_at_k, ndcg_at_k, paired_comparison


def test_hand_computed_per_example_values():
    assert hit_at_k([7], 7, 1) == 1.0 and hit_at_k([], 7, 1) == 0.0
    assert ndcg_at_k([1, 2, 7], 7, 5) == pytest.approx(0.5)  # rank 3: 1/log2(4)
    assert ndcg_at_k([1, 2, 3, 4, 5, 7], 7, 5) == 0.0  # rank 6 is outside the cut-off
    assert example_metrics([7], 7, True) == {"hit1": 1.0, "hit5": 1.0, "ndcg5": 1.0, "valid": 1.0}


def test_aggregate_counts_invalid_as_miss_and_errors_apart():
    records = [
        {**example_metrics([1], 1, True), "error": None},  # hit
        {**example_metrics([2], 1, True), "error": None},  # valid miss
        {**example_metrics([], 1, False), "error": None},  # invalid -> miss
        {**example_metrics([], 1, False), "error": None},  # invalid -> miss
        {**example_metrics([], 1, False), "error": "RateLimitError"},  # transport error: not scored
    ]
    res = aggregate(records)
    assert res["n"] == 4 and res["errors"] == 1
    m = res["metrics"]
    assert list(m) == list(METRIC_KEYS)
    assert m["HR@1"]["value"] == 0.25  # over all scored examples
    assert m["HR@1|valid"]["value"] == 0.5  # LLaRA's convention, under its own label
    assert m["ValidRatio"]["value"] == 0.5
    for v in m.values():
        assert v["ci_low"] <= v["value"] <= v["ci_high"]


def test_aggregate_of_nothing_is_nan_not_zero():
    res = aggregate([{"hit1": 0, "hit5": 0, "ndcg5": 0, "valid": 0, "error": "x"}])
    assert res["n"] == 0 and res["errors"] == 1 and math.isnan(res["metrics"]["HR@1"]["value"])


def test_all_invalid_gives_nan_hr_valid():
    res = aggregate([{**example_metrics([], 1, False), "error": None}] * 3)
    assert res["metrics"]["HR@1"]["value"] == 0 and math.isnan(res["metrics"]["HR@1|valid"]["value"])


@given(st.lists(st.integers(1, 30), min_size=1, max_size=20, unique=True), st.integers(1, 30))
def test_metric_bounds(ranking, target):
    m = example_metrics(ranking, target, True)
    assert 0 <= m["ndcg5"] <= 1 and m["hit1"] <= m["ndcg5"] <= m["hit5"]


def test_ci_narrows_with_more_examples():
    small = aggregate([{**example_metrics([i % 2], 0, True), "error": None} for i in range(20)])
    large = aggregate([{**example_metrics([i % 2], 0, True), "error": None} for i in range(2000)])
    width = lambda r: r["metrics"]["HR@1"]["ci_high"] - r["metrics"]["HR@1"]["ci_low"]  # noqa: E731
    assert width(large) < width(small) / 5


def _run(hits):
    return [{"example_id": str(i), "hit1": float(h), "ndcg5": float(h), "error": None} for i, h in enumerate(hits)]


def test_paired_comparison_mcnemar():
    a = _run([1] * 10 + [0] * 10 + [1] * 2 + [0] * 0)
    b = _run([1] * 10 + [1] * 10 + [0] * 2)
    res = paired_comparison(a, b)
    assert res["n"] == 22 and res["HR@1"]["discordant"] == [2, 10]
    assert res["HR@1"]["p_value"] == pytest.approx(0.03857, abs=1e-4)  # exact binomial, 10 of 12
    same = paired_comparison(a, a)
    assert same["HR@1"]["diff"] == 0 and same["HR@1"]["p_value"] == 1.0


def test_paired_comparison_needs_shared_examples():
    with pytest.raises(ValueError, match="share no scored example"):
        paired_comparison(_run([1]), [{"example_id": "x", "hit1": 1.0, "ndcg5": 1.0, "error": None}])
