"""Live Stage 1 (`UserIndex.open`, `UserRetriever`, `AdaptRec.from_index`): the same neighbours as the
persisted `adaptrec index neighbors` columns, the same leakage rules, new-user histories, and a live
program that ranks with a local model exactly as the plain program does on the persisted row."""

import copy
import json
import math

import datasets
import dspy
import pytest

from adaptrec_prompts.cli.app import main
from adaptrec_prompts.data.schema import SPLITS, column
from adaptrec_prompts.errors import LeakageError, UnknownItemError
from adaptrec_prompts.evaluation.harness import evaluate
from adaptrec_prompts.programs.adaptrec import AdaptRec, LiveAdaptRec, example_inputs
from adaptrec_prompts.programs.saving import load_program, save_program
from adaptrec_prompts.retrieval.index import NEW_USER, UserIndex
from adaptrec_prompts.retrieval.live import UserRetriever
from conftest import goodreads_with_neighbors

N = 5
NEW_HISTORY = ["Star Wars (1977)", "Return of the Jedi (1983)", "The Empire Strikes Back (1980)", "Fargo (1996)",
               "Toy Story (1995)"]


def _check_rules(found, row, train):
    """The leakage rules for one row's live neighbours (ids into the train split)."""
    user_of = dict(zip(column(train, "example_id"), column(train, "user_id"), strict=True))
    time_of = dict(zip(column(train, "example_id"), column(train, "timestamp"), strict=True))
    assert row["example_id"] not in found.example_ids
    assert found.user_ids == [user_of[e] for e in found.example_ids]
    assert row["user_id"] not in found.user_ids and len(set(found.user_ids)) == len(found.user_ids)
    if row["timestamp"] is not None:
        assert all(time_of[e] is None or time_of[e] < row["timestamp"] for e in found.example_ids)


def _live(retriever, row, **kw):
    return retriever(history_item_ids=row["history_item_ids"], user_id=row["user_id"], timestamp=row["timestamp"],
                     example_id=row["example_id"], **kw)


def test_live_neighbours_are_the_persisted_ones_on_every_goodreads_row(tmp_path, goodreads_raw):
    data, nb = goodreads_with_neighbors(tmp_path, goodreads_raw, N, list(SPLITS))
    retriever = UserRetriever(UserIndex.open(tmp_path / "chroma", data=data), n=N)
    ddict = datasets.load_from_disk(str(nb))
    compared, differs_without_rules = 0, 0
    for split in SPLITS:
        for row in ddict[split]:
            found = _live(retriever, row)
            assert found.example_ids == row["neighbor_example_ids"], (split, row["example_id"])
            assert found.user_ids == row["neighbor_user_ids"]
            assert found.scores == pytest.approx(row["neighbor_scores"], abs=1e-6)
            assert [nxt for _h, nxt in found.users] == row["neighbor_next_titles"]
            _check_rules(found, row, ddict["train"])
            # the comparison can fail: the same history as a new user (no user, no time) gets other neighbours
            loose = retriever(history_item_ids=row["history_item_ids"])
            differs_without_rules += loose.example_ids != row["neighbor_example_ids"]
            compared += 1
    assert compared == sum(ddict[s].num_rows for s in SPLITS) and differs_without_rules > compared // 2


@pytest.fixture(scope="module")
def ml_index(tmp_path_factory, ml100k_prepared):
    """ML-100K neighbours persisted by the CLI from a sampled pool (valid, test and 40 train rows), and the
    same collection opened again with `UserIndex.open`."""
    root = tmp_path_factory.mktemp("live")
    nb = root / "ml-nb"
    pool = ["--pool-size", "2000", "--pool-seed", "1"]
    assert main(["index", "neighbors", "--data", str(ml100k_prepared), "--chroma-path", str(root / "chroma"), "--out",
                 str(nb), "--n", "10", "--splits", "train,valid,test", "--train-sample", "40", *pool]) == 0
    index = UserIndex.open(root / "chroma", data=ml100k_prepared, pool_size=2000, pool_seed=1)
    return index, nb


def test_live_neighbours_and_random_users_are_the_persisted_ones_on_ml100k(ml_index):
    index, nb = ml_index
    assert index.count() == 2000 and not getattr(index, "rebuilt_after_damage", False)
    retriever = UserRetriever(index, n=10)
    ddict = datasets.load_from_disk(str(nb))
    train_rows = [i for i, ids in enumerate(column(ddict["train"], "neighbor_example_ids")) if ids]
    rows = [*ddict["valid"], *ddict["test"], *ddict["train"].select(train_rows)]
    assert len(rows) == 94 + 95 + 40
    for row in rows:
        found = _live(retriever, row)
        assert found.example_ids == row["neighbor_example_ids"], row["example_id"]
        _check_rules(found, row, ddict["train"])
        drawn = retriever.random_users(row["user_id"], row["timestamp"], row["example_id"], 10)
        assert drawn == list(zip(row["random_history_titles"], row["random_next_titles"], strict=True))
    # a training row's own user has other windows in the pool: they are never its neighbours
    own = [r for r in rows if r["split"] == "train"]
    pool_users = {u for u, _n, _t in index.lookup.values()}
    assert sum(r["user_id"] in pool_users for r in own) > 20


def test_a_new_history_gets_n_distinct_users_and_bad_inputs_are_named(ml_index):
    index, _nb = ml_index
    retriever = UserRetriever(index, n=10)
    found = retriever(history_titles=NEW_HISTORY)
    assert len(found.user_ids) == 10 == len(set(found.user_ids))
    assert found.scores == sorted(found.scores, reverse=True) and found.scores[0] > 0
    ids = retriever.items.ids(NEW_HISTORY, "history_titles")
    assert retriever(history_item_ids=ids, user_id=NEW_USER).example_ids == found.example_ids
    # an existing user given by id: their windows leave, the others stay in order
    first = found.user_ids[0]
    as_user = retriever(history_titles=NEW_HISTORY, user_id=first)
    assert first not in as_user.user_ids and as_user.user_ids[:9] == found.user_ids[1:]
    with pytest.raises(LeakageError, match="user_id=None"):
        retriever(history_titles=NEW_HISTORY, user_id=None)
    with pytest.raises(LeakageError, match="is a int; user ids are strings"):  # 196 would never equal "196"
        retriever(history_titles=NEW_HISTORY, user_id=int(first))
    with pytest.raises(LeakageError, match="pass the row's user_id"):  # a dataset row without its user
        retriever(history_titles=NEW_HISTORY, example_id="test/196/10")
    with pytest.raises(UnknownItemError, match=r"history_titles\[1\] = 'Star Warz \(1977\)'.*Star Wars \(1977\)"):
        retriever(history_titles=["Fargo (1996)", "Star Warz (1977)"])
    with pytest.raises(UnknownItemError, match=r"history_item_ids\[0\] = 999999"):
        retriever(history_item_ids=[999999])


def test_from_index_ranks_live_exactly_as_the_plain_program_on_persisted_rows(ml_index, tiny_model, tmp_path):
    from adaptrec_prompts.backends.hf import hf_lm

    index, nb = ml_index
    config = {"selection": "static", "n_retrieve": N, "m_select": 3, "mode": "score"}
    live = AdaptRec.from_index(index, template="movies", **config)
    plain = AdaptRec(live.template, **config)
    assert isinstance(live, LiveAdaptRec) and live.config() == plain.config()
    candidates = ["Heat (1995)", "Scream (1996)", "Titanic (1997)", "Contact (1997)", "Liar Liar (1997)"]
    lm = hf_lm(str(tiny_model))
    with dspy.context(lm=lm):
        pred = live(history_titles=NEW_HISTORY, candidate_titles=candidates)
        assert pred.valid and len(pred.scores) == 5 and all(math.isfinite(s) for s in pred.scores)
        ids = live.retriever.items.ids(candidates, "candidate_titles")
        assert sorted(pred.ranking) == sorted(ids) and pred.ranked_titles[0] == candidates[ids.index(pred.ranking[0])]
        assert len(set(pred.neighbor_user_ids)) == N and pred.selection["indices"] == [0, 1, 2]
        rows = list(datasets.load_from_disk(str(nb))["test"].select(range(3)))
        for row in rows:  # same neighbours -> same prompt -> the same scores
            a, b = live(**live.row_inputs(row)), plain(**example_inputs(row))
            assert a.neighbor_example_ids == row["neighbor_example_ids"][:N] and a.scores == b.scores
    live_run = evaluate(live, rows, tmp_path / "live", lm=lm, progress=False)
    plain_run = evaluate(plain, rows, tmp_path / "plain", lm=lm, progress=False)
    assert live_run["metrics"] == plain_run["metrics"] and live_run["n"] == 3
    logged = [json.loads(line) for line in (tmp_path / "live" / "predictions.jsonl").read_text().splitlines()]
    assert [r["neighbor_example_ids"] for r in logged] == [r["neighbor_example_ids"][:N] for r in rows]
    manifest = json.loads((tmp_path / "live" / "manifest.json").read_text())
    assert manifest["program"]["retriever"]["collection"] == index.name
    with pytest.raises(LeakageError):  # a dataset row without a user id is refused, not served as a new user
        live(**live.row_inputs({**rows[0], "user_id": None}))


def test_a_live_program_saves_no_client_copies_share_the_index_and_binds_saved_programs(ml_index, tmp_path):
    index, _nb = ml_index
    live = AdaptRec.from_index(index, selection="adaptive", n_retrieve=N, m_select=2, mode="generate")
    live.recommender.recommend.signature = live.recommender.recommend.signature.with_instructions("Pick well.")
    path = save_program(live, tmp_path / "live.json")
    text = path.read_text()
    assert "chroma" not in text.lower() and index.name not in text and "retriever" not in text
    loaded = load_program(path)
    assert type(loaded) is AdaptRec and loaded.config() == live.config()
    assert sorted(n for n, _ in live.named_parameters()) == sorted(n for n, _ in loaded.named_parameters())
    clone = copy.deepcopy(live)
    assert clone.retriever is live.retriever and clone.recommender is not live.recommender
    rebound = AdaptRec.from_index(index, program=loaded, m_select=3)
    assert rebound.recommender.recommend.signature.instructions == "Pick well."
    assert rebound.config() == {**live.config(), "m_select": 3}
    random = AdaptRec(live.template, selection="random", n_retrieve=N, m_select=2)  # "random_from" in its config
    assert load_program(save_program(random, tmp_path / "random.json")).config() == random.config()
