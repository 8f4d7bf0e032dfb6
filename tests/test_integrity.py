"""Integrity: leak-free LLaRA imports (users re-linked), LLaRA's one-row-per-user protocol, a safe unpickler,
finite baseline scores, statistics that respect users, paired comparisons on the same data, and a harness
that stops on bugs instead of counting them as provider errors."""

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adaptrec_prompts.data import load_llara
from adaptrec_prompts.data.llara import LlaraRow, link_users, read_restricted_pickle
from adaptrec_prompts.errors import LeakageError, UnsafePickleError
from adaptrec_prompts.evaluation.metrics import aggregate, paired_comparison
from conftest import check_neighbour_rules


# ---- LLaRA files: users re-linked from the windows -------------------------------------------------------

def _windows(seq: list[int], window: int = 10) -> list[tuple[list[int], int]]:
    return [(seq[max(0, t - window) : t], seq[t]) for t in range(len(seq))]


def _write_llara(folder: Path, files: dict[str, list[list[int]]], n_items: int = 20, shuffle: bool = False) -> None:
    """A LLaRA-format folder: every window of every user, written user after user (as LLaRA does)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "id2name.txt").write_text("".join(f"{i}::Artist {i}\n" for i in range(n_items)))
    for name, users in files.items():
        rows = [(h, nxt) for seq in users for h, nxt in _windows(seq)]
        if shuffle:
            rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
        frame = pd.DataFrame({"seq": [h + [n_items] * (10 - len(h)) for h, _ in rows],
                              "len_seq": [max(1, len(h)) for h, _ in rows], "next": [nxt for _, nxt in rows]})
        _plain_columns(frame).to_pickle(folder / name)


def _plain_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Column names as plain Python strings, as in LLaRA's files (pandas >= 3 would pickle Arrow strings)."""
    frame.columns = pd.Index(list(frame.columns), dtype=object)
    return frame


USERS = [[0, 1, 2, 3, 4, 5, 6], [0, 1, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16, 17, 18, 19, 0, 1, 2, 3, 4]]


def test_linking_recovers_users_and_positions_even_with_shared_prefixes(tmp_path):
    _write_llara(tmp_path, {"test_data.df": USERS, "val_data.df": USERS[:2]})  # lower-case names (forks)
    rows, _titles, sources, notes = load_llara(tmp_path)
    assert {"test_data.df", "val_data.df"} <= set(sources)
    link = notes["user_linking"]["test"]
    assert link["users"] == 3 and link["links_adjacent_with_other_candidates"] >= 1  # [] -> [0] is shared
    assert link["chains_not_starting_empty"] == 0 and link["ambiguous_chain_ends"] == 0
    by_user = {}
    for r in rows["test"]:
        by_user.setdefault(r.user, []).append(r)
    assert len(by_user) == 3
    for user_rows, seq in zip(by_user.values(), USERS):
        assert [(r.history, r.target, r.position) for r in user_rows] == [
            (h, n, t) for t, (h, n) in enumerate(_windows(seq)) if len(h) >= 3]
        assert [r.last for r in user_rows] == [False] * (len(user_rows) - 1) + [True]


def test_shuffled_files_link_by_content_and_count_what_stays_ambiguous(tmp_path):
    _write_llara(tmp_path, {"Test_data.df": USERS}, shuffle=True)
    _rows, _t, _s, notes = load_llara(tmp_path)
    link = notes["user_linking"]["test"]
    # [] -> [0] and [0] -> [0, 1] are continued by two users' rows: without adjacency they stay unlinked,
    # and the users' tails become chains that do not start with an empty history (counted, not guessed)
    assert link["ambiguous_chain_ends"] >= 1 and link["chains_not_starting_empty"] >= 1
    assert link["links_unique_non_adjacent"] > 0


def test_link_users_rule_is_the_window_continuation():
    rows = [LlaraRow(0, [], 5, None), LlaraRow(1, [5], 6, None), LlaraRow(2, [9], 1, None)]
    linked, stats = link_users(rows, "x")
    assert [r.user for r in linked] == ["x-u0", "x-u0", "x-u1"] and stats["users"] == 2
    assert [r.position for r in linked] == [0, 1, 1]  # a chain starting at a 1-item history starts at 1


@pytest.fixture(scope="module")
def llara_lastfm(tmp_path_factory, llara_lastfm_raw):
    from adaptrec_prompts.data.prepare import build, save
    from adaptrec_prompts.data.protocol import ProtocolConfig
    from adaptrec_prompts.retrieval.embedders import make_embedder
    from adaptrec_prompts.retrieval.index import make_client
    from adaptrec_prompts.retrieval.index import open_index
    from adaptrec_prompts.retrieval.neighbors import add_neighbors

    root = tmp_path_factory.mktemp("llara-lastfm")
    data = save(*build("llara", llara_lastfm_raw, ProtocolConfig()), root / "data")
    embedder = make_embedder("collab", data)
    add_neighbors(data, root / "nb", open_index(data, embedder, make_client(path=root / "chroma")), embedder, n=10,
                  train_sample=300)
    return data, root / "nb"


def test_llara_lastfm_is_llaras_122_users_one_row_each(llara_lastfm):
    import datasets

    from adaptrec_prompts.data.prepare import load_manifest

    ddict = datasets.load_from_disk(str(llara_lastfm[0]))
    assert (ddict["test"].num_rows, ddict["valid"].num_rows, ddict["test_extended"].num_rows) == (122, 122, 2495)
    for split in ("test", "valid"):
        assert len(set(ddict[split]["user_id"])) == 122
    last = {}
    for r in ddict["test_extended"]:
        if r["position"] > last.get(r["user_id"], (-1,))[0]:
            last[r["user_id"]] = (r["position"], r["history_item_ids"], r["target_item_id"], r["candidate_item_ids"])
    for r in ddict["test"]:  # the user's last window, identical to its test_extended twin
        assert last[r["user_id"]] == (r["position"], r["history_item_ids"], r["target_item_id"],
                                      r["candidate_item_ids"])
    assert load_manifest(llara_lastfm[0])["loader_notes"]["user_linking"]["train"]["users"] == 976


def test_llara_lastfm_training_rows_never_see_their_own_example_or_user(llara_lastfm):
    ddict, checked = check_neighbour_rules(llara_lastfm[1])
    queried = [r for r in ddict["train"] if r["neighbor_example_ids"]]
    assert len(queried) == 300 and checked >= 2 * 10 * (300 + 122 + 122)


def test_neighbours_are_refused_for_rows_without_user_ids(tmp_path, goodreads_raw):
    import datasets

    from adaptrec_prompts.data.prepare import build, save
    from adaptrec_prompts.data.protocol import ProtocolConfig
    from adaptrec_prompts.retrieval.embedders import make_embedder
    from adaptrec_prompts.retrieval.index import make_client
    from adaptrec_prompts.retrieval.index import open_index
    from adaptrec_prompts.retrieval.neighbors import add_neighbors

    ddict, titles, manifest = build("goodreads", goodreads_raw, ProtocolConfig(k_candidates=10))
    ddict = datasets.DatasetDict({s: d.map(lambda r: {"user_id": None}, features=d.features) for s, d in ddict.items()})
    data = save(ddict, titles, manifest, tmp_path / "gr")
    embedder = make_embedder("collab", data)
    index = open_index(data, embedder, make_client(path=tmp_path / "chroma"))
    with pytest.raises(LeakageError, match="no user id"):
        add_neighbors(data, tmp_path / "nb", index, embedder, n=3, splits=["test"])
    assert not (tmp_path / "nb").exists()


def test_random_users_are_drawn_from_the_whole_pool_reproducibly(tmp_path, goodreads_raw):
    import datasets

    from conftest import goodreads_with_neighbors

    _data, nb = goodreads_with_neighbors(tmp_path / "a", goodreads_raw, 3, ["test_extended"])
    _data, again = goodreads_with_neighbors(tmp_path / "b", goodreads_raw, 3, ["test_extended"])
    rows = datasets.load_from_disk(str(nb))["test_extended"]
    assert rows["random_example_ids"] == datasets.load_from_disk(str(again))["test_extended"]["random_example_ids"]
    check_neighbour_rules(nb)
    retrieved_users = {u for us in rows["neighbor_user_ids"] for u in us}
    random_users = {u for us in rows["random_user_ids"] for u in us}
    assert random_users - retrieved_users  # users that retrieval never returns show up: a control, not a shuffle


# ---- the unpickler ----------------------------------------------------------------------------------------

def test_pickle_that_loads_a_sibling_through_pandas_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Evil()))
    payload = b"cpandas\nread_pickle\n(S'evil.pkl'\ntR."  # pandas.read_pickle("evil.pkl"), 36 bytes
    (tmp_path / "Test_data.df").write_bytes(payload)
    (tmp_path / "id2name.txt").write_text("0::a\n")
    with pytest.raises(UnsafePickleError, match=r"pandas\.read_pickle"):
        load_llara(tmp_path)
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "x.df").write_bytes(b"cnumpy\nload\n(S'evil.npy'\nNI01\ntR.")  # numpy.load(..., allow_pickle=True)
    with pytest.raises(UnsafePickleError, match=r"numpy\.load"):
        read_restricted_pickle(tmp_path / "x.df")


def test_a_dataframe_pickled_by_this_pandas_still_loads(tmp_path):
    frame = _plain_columns(pd.DataFrame({"seq": [[1, 2, 3]], "len_seq": [3], "next": [4]}))
    frame.to_pickle(tmp_path / "f.df")
    assert read_restricted_pickle(tmp_path / "f.df").equals(frame)
    pd.DataFrame({"seq": [[1]], "len_seq": [1], "next": [2]}).to_pickle(tmp_path / "arrow.df")  # Arrow string names
    with pytest.raises(UnsafePickleError, match="pandas.Index.*dtype=object"):
        read_restricted_pickle(tmp_path / "arrow.df")


# ---- baselines --------------------------------------------------------------------------------------------

def test_sasrec_scores_are_finite_for_short_histories(ml100k):
    import torch

    from adaptrec_prompts.evaluation.baselines.sasrec import SASRecBaseline

    model = SASRecBaseline(ml100k["train"].select(range(2000)), epochs=1)
    short = [r for r in ml100k["test_extended"].select(range(300)) if len(r["history_item_ids"]) < 10][:20]
    assert short
    logits = model.model(model._encode([r["history_item_ids"] for r in short]))
    assert torch.isfinite(logits).all()  # all-masked attention rows gave NaN for every score before
    rankings = [model.predict_row(r)["ranking"] for r in short]
    assert any(rank != r["candidate_item_ids"] for rank, r in zip(rankings, short))


def test_sasrec_early_stopping_keeps_the_best_validation_epoch(ml100k):
    from adaptrec_prompts.evaluation.baselines.sasrec import SASRecBaseline

    valid = ml100k["valid"].to_list()
    model = SASRecBaseline(ml100k["train"].select(range(1500)), epochs=4, valid=valid, patience=1, seed=1, dim=16)
    record = model.training_record()
    curve = record["valid_hr1_per_epoch"]
    assert len(curve) == record["epochs_trained"] <= 4
    best = max(range(len(curve)), key=lambda e: (curve[e], -e))  # the first epoch with the highest HR@1
    assert record["best_epoch"] == best + 1
    assert len(curve) == 4 or len(curve) - 1 - best == 1  # stopped after `patience` epochs without a gain
    kept = sum(model.predict_row(r)["ranking"][0] == r["target_item_id"] for r in valid) / len(valid)
    assert kept == pytest.approx(curve[best], abs=1e-4)  # the kept weights are the best epoch's, not the last
    assert model.config()["epochs_chosen_on"] == "valid HR@1" and "epochs" not in model.config()


def test_popularity_counts_are_the_training_users_interactions(ml100k, ml100k_raw):
    from adaptrec_prompts.evaluation.baselines import PopularityBaseline
    from adaptrec_prompts.retrieval.embedders import training_sequences

    train_users = set(ml100k["train"]["user_id"])
    by_hand: dict[int, int] = {}
    for line in (ml100k_raw / "u.data").read_text().splitlines():
        user, item = line.split("\t")[:2]
        if user in train_users:
            by_hand[int(item)] = by_hand.get(int(item), 0) + 1
    pop = PopularityBaseline(training_sequences(ml100k["train"]))
    assert dict(pop.counts) == by_hand
    row = ml100k["test"][3]
    assert pop.predict_row(row)["ranking"] == sorted(row["candidate_item_ids"], key=lambda i: (-by_hand.get(i, 0), i))


# ---- statistics -------------------------------------------------------------------------------------------

def _records(users: int, per_user: int, hit_users: set[int]) -> list[dict]:
    return [{"example_id": f"{u}/{k}", "user_id": str(u), "hit1": float(u in hit_users), "hit5": 1.0, "ndcg5": 0.5,
             "valid": 1.0, "target_item_id": 1, "candidate_item_ids": [1, 2]}
            for u in range(users) for k in range(per_user)]


def test_cis_resample_users_when_users_have_several_rows():
    records = _records(20, 10, set(range(10)))
    clustered = aggregate(records)
    flat = aggregate([{**r, "user_id": None} for r in records])
    width = lambda a: a["metrics"]["HR@1"]["ci_high"] - a["metrics"]["HR@1"]["ci_low"]  # noqa: E731
    assert clustered["resampling"] == {"unit": "user", "clusters": 20} and flat["resampling"]["unit"] == "example"
    assert width(clustered) > 2 * width(flat)  # 20 users, not 200 independent rows


def test_one_row_per_user_is_the_ordinary_bootstrap():
    records = _records(50, 1, set(range(0, 50, 3)))
    agg = aggregate(records, n_boot=500, seed=3)
    hits = np.array([r["hit1"] for r in records])
    idx = np.random.default_rng(3).integers(0, 50, size=(500, 50))
    lo, hi = np.percentile(hits[idx].mean(1), [2.5, 97.5])
    assert (agg["metrics"]["HR@1"]["ci_low"], agg["metrics"]["HR@1"]["ci_high"]) == pytest.approx((lo, hi))
    assert agg["resampling"] == {"unit": "example", "clusters": 50}


def test_paired_tests_flip_signs_by_user_when_users_have_several_rows():
    a = _records(20, 10, set())
    b = _records(20, 10, {0, 1})  # two users gain 10 hits each
    res = paired_comparison(a, b)
    assert res["HR@1"]["discordant"] == [0, 20] and res["HR@1"]["test"] == "sign-flip permutation by user"
    assert res["HR@1"]["p_value"] > 0.2  # McNemar on 20 "independent" pairs would say p < 1e-5
    single = paired_comparison(_records(30, 1, set()), _records(30, 1, set(range(8))))
    assert single["HR@1"]["test"] == "McNemar exact" and single["HR@1"]["p_value"] < 0.01


def test_paired_comparison_refuses_runs_on_different_candidates():
    a = _records(5, 1, set())
    b = [{**r, "candidate_item_ids": [2, 1]} if r["example_id"] == "3/0" else r for r in _records(5, 1, {1})]
    with pytest.raises(ValueError, match=r"candidate_item_ids for 1 of 5 shared examples \(first: 3/0\)"):
        paired_comparison(a, b)


def test_report_tables_have_as_many_delimiter_cells_as_columns():
    from adaptrec_prompts.evaluation.report import table

    metric = {"value": 0.1, "ci_low": 0.0, "ci_high": 0.2}
    run = {"name": "x", "config": {"program": "static", "split": "test"},
           "results": {"n": 3, "errors": 1, "metrics": {k: metric for k in ("HR@1", "HR@1|valid", "HR@5", "NDCG@5",
                                                                               "ValidRatio")},
                       "lm_seconds": 1.0, "total_seconds": 2.0}}
    lines = [line for line in table([run]).splitlines() if line.startswith("|")]
    cells = [len(re.split(r"(?<!\\)\|", line)) for line in lines]
    assert len(lines) == 3 and len(set(cells)) == 1 and "errors" in lines[0]


# ---- the harness: provider errors are retried and counted, bugs stop the run -------------------------------

class _Flaky:
    """A baseline-like program that fails on chosen examples (a real exception, as a provider would raise)."""

    def __init__(self, failures: dict[str, list[BaseException]]):
        self.failures = failures

    def config(self) -> dict:
        return {"name": "flaky"}

    def predict_row(self, row):
        pending = self.failures.get(row["example_id"])
        if pending:
            raise pending.pop(0)
        return {"raw": None, "answer": None, "ranking": list(row["candidate_item_ids"]), "valid": True, "reason": "",
                "selection": None}


def test_a_bug_stops_the_run_and_keeps_what_finished(ml100k, tmp_path):
    from adaptrec_prompts.evaluation.harness import evaluate
    from adaptrec_prompts.evaluation.results import read_log

    rows = ml100k["test"].select(range(5)).to_list()
    bug = _Flaky({rows[2]["example_id"]: [KeyError("history_titles")]})
    with pytest.raises(KeyError, match="history_titles"):
        evaluate(bug, rows, tmp_path / "run", {"a": 1}, progress=False)
    assert list(read_log(tmp_path / "run" / "predictions.jsonl")) == [r["example_id"] for r in rows[:2]]
    results = evaluate(_Flaky({}), rows, tmp_path / "run", {"a": 1}, progress=False)
    assert results["n"] == 5 and results["errors"] == 0


def test_provider_errors_are_retried_then_counted(ml100k, tmp_path):
    from adaptrec_prompts.evaluation.harness import evaluate
    from adaptrec_prompts.evaluation.results import read_log

    class ServerError(Exception):
        status_code = 503

    rows = ml100k["test"].select(range(4)).to_list()
    flaky = _Flaky({rows[0]["example_id"]: [ConnectionError("reset")],
                    rows[1]["example_id"]: [ServerError("unavailable")] * 5,
                    rows[2]["example_id"]: [TimeoutError("slow")]})
    results = evaluate(flaky, rows, tmp_path / "run", {"a": 1}, progress=False, retries=2, backoff=0)
    log = read_log(tmp_path / "run" / "predictions.jsonl")
    assert log[rows[0]["example_id"]]["retries"] == 1 and not log[rows[0]["example_id"]]["error"]
    assert "unavailable" in log[rows[1]["example_id"]]["error"]
    # a timeout is not retried by the harness (dspy.LM retried it already: the wait would multiply); counted
    assert "slow" in log[rows[2]["example_id"]]["error"]
    assert (results["n"], results["errors"], results["retries"]) == (2, 2, 3)


def test_top1_position_histogram_flags_a_run_that_picks_a_list_position():
    from adaptrec_prompts.evaluation.harness import top1_positions

    cands = list(range(100, 120))
    first = [{"ranking": [cands[0]], "candidate_item_ids": cands} for _ in range(8)]
    spread = [{"ranking": [cands[i]], "candidate_item_ids": cands} for i in range(20)]
    pos = top1_positions(first + spread[:2])
    assert pos["counts"][:2] == [9, 1] and pos["share_at_1"] == 0.9 and pos["flag"]
    even = top1_positions(spread)
    assert even["most_common_share"] == 0.05 and not even["flag"]
    lucky = [{"ranking": [cands[19 if i < 6 else i % 19]], "candidate_item_ids": cands} for i in range(38)]
    assert top1_positions(lucky)["most_common_share"] > 3 / 20 and not top1_positions(lucky)["flag"]  # 6/38: chance


def test_with_threads_a_bug_still_keeps_every_example_that_finished(ml100k, tmp_path):
    import threading

    from adaptrec_prompts.evaluation.harness import evaluate
    from adaptrec_prompts.evaluation.results import read_log

    rows = ml100k["test"].select(range(8)).to_list()
    released = threading.Event()

    class SlowBug(_Flaky):
        def predict_row(self, row):
            if row["example_id"] == rows[1]["example_id"]:
                released.wait(10)  # fail only after rows 2 and 3 have finished
                raise KeyError("boom")
            out = super().predict_row(row)
            if row["example_id"] == rows[3]["example_id"]:
                released.set()
            return out

    with pytest.raises(KeyError, match="boom"):
        evaluate(SlowBug({}), rows, tmp_path / "run", {"a": 1}, progress=False, threads=4)
    done = set(read_log(tmp_path / "run" / "predictions.jsonl"))
    assert {rows[i]["example_id"] for i in (0, 2, 3)} <= done and rows[1]["example_id"] not in done


def test_only_explicit_causes_make_an_error_a_transport_error():
    from adaptrec_prompts.evaluation.harness import is_transport_error

    try:
        try:
            raise TimeoutError("slow")
        except TimeoutError:
            raise KeyError("a bug while handling it")  # noqa: B904 - the implicit context is the point
    except KeyError as exc:
        assert not is_transport_error(exc)
    wrapped = RuntimeError("provider")
    wrapped.__cause__ = ConnectionRefusedError("refused")
    assert is_transport_error(wrapped)

    class APIConnectionError(Exception):  # litellm maps unrelated client bugs to this name too
        pass

    assert not is_transport_error(APIConnectionError("KeyError: 'choices'"))


def test_neighbours_refuse_splits_whose_users_are_not_sure(tmp_path):
    from adaptrec_prompts.data.prepare import build, save
    from adaptrec_prompts.data.protocol import ProtocolConfig
    from adaptrec_prompts.retrieval.embedders import make_embedder
    from adaptrec_prompts.retrieval.index import make_client
    from adaptrec_prompts.retrieval.index import open_index
    from adaptrec_prompts.retrieval.neighbors import add_neighbors

    def neighbours(raw: Path, splits: list[str]) -> None:
        data = save(*build("llara", raw, ProtocolConfig(k_candidates=5)), raw.parent / (raw.name + "-data"))
        embedder = make_embedder("collab", data)
        index = open_index(data, embedder, make_client(path=raw.parent / (raw.name + "-chroma")))
        add_neighbors(data, raw.parent / (raw.name + "-nb"), index, embedder, n=2, splits=splits)

    _write_llara(tmp_path / "clean", {"train_data.df": USERS, "Test_data.df": [[3, 9, 1, 15, 7, 2]]})
    neighbours(tmp_path / "clean", ["train", "test"])  # every user sure: allowed
    _write_llara(tmp_path / "shuffled", {"train_data.df": USERS, "Test_data.df": USERS[:1]}, shuffle=True)
    with pytest.raises(LeakageError, match="ambiguous"):
        neighbours(tmp_path / "shuffled", ["train"])
    # the held-out file holds only the tail of a training user's sequence: its first window continues train
    tail = USERS[2] + [5, 6, 7]
    _write_llara(tmp_path / "tail", {"train_data.df": USERS})
    frame = pd.DataFrame({"seq": [tail[t - 10 : t] for t in (14, 15, 16)], "len_seq": [10] * 3,
                          "next": [tail[t] for t in (14, 15, 16)]})
    _plain_columns(frame).to_pickle(tmp_path / "tail" / "Test_data.df")
    with pytest.raises(LeakageError, match="continues a training row"):
        neighbours(tmp_path / "tail", ["test"])
