"""Protocol invariants: split sizes, candidates, determinism, and leakage rules 1-3 as they concern splits."""

import datasets
import numpy as np
import pytest

from adaptrec_prompts.data import load_movielens
from adaptrec_prompts.data.prepare import build, data_hash, load_manifest, save, stats
from adaptrec_prompts.data.protocol import ProtocolConfig, draw_candidates, user_sequences
from adaptrec_prompts.data.schema import COLUMNS, SPLITS
from adaptrec_prompts.errors import ConfigError, OutputExistsError


@pytest.fixture(scope="module")
def ml(ml100k_prepared):
    return datasets.load_from_disk(str(ml100k_prepared))


@pytest.fixture(scope="module")
def seqs(ml100k_raw):
    return user_sequences(load_movielens(ml100k_raw))


def test_contract_splits_and_columns(ml, ml100k_prepared):
    assert isinstance(ml, datasets.DatasetDict) and set(ml) == set(SPLITS)
    for split in SPLITS:
        assert set(COLUMNS) <= set(ml[split].column_names)
    assert (ml100k_prepared / "items.jsonl").is_file()
    manifest = load_manifest(ml100k_prepared)
    assert manifest["seed"] == 0 and manifest["protocol"]["k_candidates"] == 20
    assert manifest["sources"]["u.data"] == "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"


def test_llara_compatible_user_split(ml):
    users = {s: set(ml[s]["user_id"]) for s in ("train", "valid", "test")}
    assert (len(users["train"]), len(users["valid"]), len(users["test"])) == (754, 94, 95)
    assert ml["valid"].num_rows == 94 and ml["test"].num_rows == 95  # one example per held-out user


def test_leakage_rule_1_no_user_in_two_splits(ml):
    train, valid, test = (set(ml[s]["user_id"]) for s in ("train", "valid", "test"))
    assert not (train & valid) and not (train & test) and not (valid & test)
    assert set(ml["test_extended"]["user_id"]) == test


def test_held_out_users_start_after_training_users(ml, seqs):
    first = {u: seqs[u][1][0] for u in seqs}
    assert max(first[u] for u in set(ml["train"]["user_id"])) <= min(first[u] for u in set(ml["test"]["user_id"]))


@pytest.mark.parametrize("split", SPLITS)
def test_windows_follow_the_user_sequence(ml, seqs, split):
    """History = the <=10 items before the target in time order (rule 3 within an example)."""
    ds = ml[split].select(range(0, ml[split].num_rows, max(1, ml[split].num_rows // 500)))
    for row in ds:
        items, times = seqs[row["user_id"]]
        t = row["position"]
        assert row["target_item_id"] == items[t] and row["timestamp"] == times[t]
        assert row["history_item_ids"] == items[max(0, t - 10) : t]
        assert 3 <= len(row["history_item_ids"]) <= 10
        assert all(times[i] <= row["timestamp"] for i in range(t))


@pytest.mark.parametrize("split", SPLITS)
def test_candidate_invariants(ml, seqs, split):
    positions = []
    for row in ml[split].select(range(min(2000, ml[split].num_rows))):
        cands = row["candidate_item_ids"]
        assert len(cands) == 20 and len(set(cands)) == 20
        assert cands.count(row["target_item_id"]) == 1
        full_history = set(seqs[row["user_id"]][0])
        assert full_history & set(cands) == {row["target_item_id"]}  # no item the user ever touched
        assert row["candidate_titles"] == [ml_title(ml, c, row) for c in cands]
        positions.append(cands.index(row["target_item_id"]))
    assert len(set(positions)) > 5  # shuffled: the target is not always in the same slot


def ml_title(ml, item, row):
    return dict(zip(row["candidate_item_ids"], row["candidate_titles"]))[item]


def test_test_row_equals_last_extended_window(ml):
    ext = {r["example_id"].rsplit("/", 1)[0].replace("test_extended", "test"): r for r in ml["test_extended"]}
    for row in ml["test"]:
        twin = ext[row["example_id"]]
        assert twin["candidate_item_ids"] == row["candidate_item_ids"]


def test_same_inputs_and_seed_give_byte_identical_folders(ml100k_raw, ml100k_prepared, tmp_path):
    ddict, titles, manifest = build("ml-100k", ml100k_raw, ProtocolConfig())
    again = save(ddict, titles, manifest, tmp_path / "again")
    for path in sorted(p for p in ml100k_prepared.rglob("*") if p.is_file()):
        assert (again / path.relative_to(ml100k_prepared)).read_bytes() == path.read_bytes(), path
    assert data_hash(again) == load_manifest(ml100k_prepared)["data_hash"]


def test_other_seed_other_candidates_same_examples(goodreads_raw):
    a, _, _ = build("goodreads", goodreads_raw, ProtocolConfig(seed=0))
    b, _, _ = build("goodreads", goodreads_raw, ProtocolConfig(seed=1))
    assert a["train"]["history_item_ids"] == b["train"]["history_item_ids"]
    assert a["train"]["candidate_item_ids"] != b["train"]["candidate_item_ids"]


def test_extended_seeds_multiply_test_windows(goodreads_raw):
    one, _, _ = build("goodreads", goodreads_raw, ProtocolConfig(extended_seeds=1))
    three, _, _ = build("goodreads", goodreads_raw, ProtocolConfig(extended_seeds=3))
    assert three["test_extended"].num_rows == 3 * one["test_extended"].num_rows
    assert sorted(set(three["test_extended"]["candidate_seed"])) == [0, 1, 2]


def test_llara_prepare_lastfm(llara_lastfm_raw):
    ddict, titles, manifest = build("llara", llara_lastfm_raw, ProtocolConfig())
    assert {s: ddict[s].num_rows for s in SPLITS} == {"train": 47872, "valid": 122, "test": 122,
                                                       "test_extended": 2495}
    assert {s: manifest["counts"]["users"][s] for s in SPLITS} == {"train": 976, "valid": 122, "test": 122,
                                                                   "test_extended": 122}
    row = ddict["test"][0]
    assert row["user_id"] == "test-u0" and row["timestamp"] is None
    assert row["target_item_id"] in row["candidate_item_ids"]
    assert not set(row["history_item_ids"]) & set(row["candidate_item_ids"])
    assert manifest["counts"]["items"] == len(titles) == 4606


def test_draw_candidates_refuses_when_too_few_items():
    rng = np.random.default_rng(0)
    with pytest.raises(Exception, match="lower --k-candidates"):
        draw_candidates(rng, 1, {2, 3}, np.arange(1, 10), k=20)


def test_bad_config_and_unknown_dataset(goodreads_raw):
    with pytest.raises(ConfigError, match="k_candidates"):
        ProtocolConfig(k_candidates=1)
    with pytest.raises(ConfigError, match=r"unknown dataset 'movielens'; valid: ml-100k, lastfm, goodreads, llara"):
        build("movielens", goodreads_raw, ProtocolConfig())


def test_existing_output_is_not_overwritten(goodreads_raw, tmp_path):
    ddict, titles, manifest = build("goodreads", goodreads_raw, ProtocolConfig())
    out = save(ddict, titles, manifest, tmp_path / "gr")
    marker = out / "manifest.json"
    before = marker.read_bytes()
    with pytest.raises(OutputExistsError, match="pass overwrite=True") as caught:  # a library call: the argument
        save(ddict, titles, manifest, out)
    assert "--overwrite" not in str(caught.value) and "--overwrite" in caught.value.cli_message  # the CLI's wording
    assert marker.read_bytes() == before
    save(ddict, titles, manifest, out, overwrite=True)
    assert not list(tmp_path.glob(".gr.partial-*"))


def test_stats(ml100k_prepared):
    info = stats(ml100k_prepared)
    assert info["items"] == 1682
    train = info["splits"]["train"]
    assert train["users"] == 754 and sum(train["history_length"].values()) == train["examples"]
    assert min(train["history_length"]) == 3 and max(train["history_length"]) == 10
