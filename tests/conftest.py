"""Shared fixtures. Tests are offline and deterministic; the datasets are read from ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ADAPTREC_DATA", REPO.parent / "shared" / "data"))
FIXTURES = REPO / "tests" / "fixtures"


def data_path(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"dataset path {path} not found; set ADAPTREC_DATA to the shared/data folder")
    return path


@pytest.fixture(scope="session")
def ml100k_raw() -> Path:
    return data_path("ml-100k")


@pytest.fixture(scope="session")
def lastfm_raw() -> Path:
    return data_path("lastfm-2k")


@pytest.fixture(scope="session")
def llara_lastfm_raw() -> Path:
    return data_path("llara-ref", "lastfm")


@pytest.fixture(scope="session")
def llara_movielens_raw() -> Path:
    return data_path("llara-ref", "movielens")


@pytest.fixture(scope="session")
def goodreads_raw() -> Path:
    return FIXTURES / "goodreads"


@pytest.fixture(scope="session")
def ml100k_prepared(tmp_path_factory, ml100k_raw) -> Path:
    """ML-100K prepared once per session with the default protocol and seed 0."""
    from adaptrec_prompts.data.prepare import build, save
    from adaptrec_prompts.data.protocol import ProtocolConfig

    ddict, titles, manifest = build("ml-100k", ml100k_raw, ProtocolConfig())
    return save(ddict, titles, manifest, tmp_path_factory.mktemp("prepared") / "ml-100k")


@pytest.fixture(scope="session")
def ml100k(ml100k_prepared):
    import datasets

    return datasets.load_from_disk(str(ml100k_prepared))


def goodreads_with_neighbors(root: Path, raw: Path, n: int, splits: list[str]) -> tuple[Path, Path]:
    """The GoodReads fixture prepared (K=10) under root/gr, plus a copy with collab Chroma neighbours
    for `splits` under root/gr-nb. Returns (prepared, with neighbours)."""
    from adaptrec_prompts.data.prepare import build, save
    from adaptrec_prompts.data.protocol import ProtocolConfig
    from adaptrec_prompts.retrieval.embedders import make_embedder
    from adaptrec_prompts.retrieval.index import make_client
    from adaptrec_prompts.retrieval.index import open_index
    from adaptrec_prompts.retrieval.neighbors import add_neighbors

    data = save(*build("goodreads", raw, ProtocolConfig(k_candidates=10)), root / "gr")
    emb = make_embedder("collab", data)
    add_neighbors(data, root / "gr-nb", open_index(data, emb, make_client(path=root / "chroma")), emb, n=n,
                  splits=splits)
    return data, root / "gr-nb"


def with_fake_neighbors(row: dict, train, n: int = 10) -> dict:
    """Attach N training windows as neighbours and the next N as "random users" (stand-ins for tests that
    do not test Stage 1)."""
    rows = train.select(range(n))
    others = train.select(range(2 * n - 1, n - 1, -1) if train.num_rows >= 2 * n else range(n - 1, -1, -1))
    return {**row, "neighbor_history_titles": rows["history_titles"], "neighbor_next_titles": rows["target_title"],
            "random_history_titles": others["history_titles"], "random_next_titles": others["target_title"]}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, ml100k) -> Path:
    """A micro Llama with a chat template and a BPE tokenizer trained on rendered ML-100K prompts."""
    from adaptrec_prompts.backends.tiny import build_tiny_llama, prompt_corpus
    from adaptrec_prompts.data.render import load_template

    return build_tiny_llama(prompt_corpus(ml100k["train"].select(range(200)), load_template("movies")),
                            tmp_path_factory.mktemp("models") / "micro", size="micro", chat_template=True)


def check_neighbour_rules(out):
    """Every persisted neighbour and random user of every split obeys the leakage rules; they are distinct
    users. Returns (the DatasetDict, how many neighbours were checked)."""
    import datasets

    from adaptrec_prompts.data.schema import column

    ddict = datasets.load_from_disk(str(out))
    train = ddict["train"]
    pool_ids = set(column(train, "example_id"))
    time_of = dict(zip(column(train, "example_id"), column(train, "timestamp")))
    user_of = dict(zip(column(train, "example_id"), column(train, "user_id")))
    next_of = dict(zip(column(train, "example_id"), column(train, "target_item_id")))
    checked = 0
    for split in ("train", "valid", "test", "test_extended"):
        for row in ddict[split]:
            for prefix in ("neighbor_", "random_"):
                ids = row[prefix + "example_ids"]
                assert set(ids) <= pool_ids  # rule 1: the pool is training examples only
                assert row["example_id"] not in ids  # never the query's own example
                assert len({user_of[nid] for nid in ids}) == len(ids)  # N neighbours = N distinct users
                assert row[prefix + "user_ids"] == [user_of[nid] for nid in ids]
                for nid, next_item in zip(ids, row[prefix + "next_item_ids"]):
                    assert user_of[nid] != row["user_id"]  # rule 2: never the query's own user
                    if row["timestamp"] is not None and time_of[nid] is not None:
                        assert time_of[nid] < row["timestamp"]  # rule 3: nothing at or after the query time
                    assert next_of[nid] == next_item
                checked += len(ids)
            assert len(row["random_example_ids"]) == len(row["neighbor_example_ids"])
    return ddict, checked


@pytest.fixture(scope="module")
def stage3(ml100k):
    """The Stage-3 messages and the K answer completions for one real ML-100K test example (static, M = 5)."""
    from adaptrec_prompts.data.render import load_template
    from adaptrec_prompts.programs.chat_adapters import eval_adapter
    from adaptrec_prompts.programs.recommender import NextItemRecommender

    row = with_fake_neighbors(ml100k["test"][0], ml100k["train"])
    rec, adapter = NextItemRecommender(load_template("movies")), eval_adapter()
    inputs = rec.inputs(row["history_titles"], row["candidate_titles"],
                        list(zip(row["neighbor_history_titles"][:5], row["neighbor_next_titles"][:5])))
    messages = adapter.format(rec.recommend.signature, demos=[], inputs=inputs)
    completions = [adapter.format_assistant_message_content(rec.recommend.signature, {"answer": rec.answer_text(i, t)})
                   for i, t in enumerate(row["candidate_titles"], start=1)]
    return messages, completions
