"""Stage 1: embedders, the Chroma user index (embedded and a real `chroma run` server), exclusions."""

import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import chromadb
import datasets
import numpy as np
import pytest

from adaptrec_prompts.cli.app import main
from adaptrec_prompts.data.prepare import build, load_manifest, save
from adaptrec_prompts.data.protocol import ProtocolConfig
from adaptrec_prompts.data.schema import column
from adaptrec_prompts.retrieval.embedders import CollabEmbedder, LMEmbedder, l2_normalize, training_sequences
from adaptrec_prompts.retrieval.embedders import make_embedder
from adaptrec_prompts.retrieval.index import QueryStats, UserIndex, collection_name, exact_top_k, make_client
from adaptrec_prompts.retrieval.index import open_index
from adaptrec_prompts.retrieval.neighbors import add_neighbors
from conftest import check_neighbour_rules


@pytest.fixture(scope="module")
def gr(tmp_path_factory, goodreads_raw):
    ddict, titles, manifest = build("goodreads", goodreads_raw, ProtocolConfig(k_candidates=10))
    return save(ddict, titles, manifest, tmp_path_factory.mktemp("gr") / "gr")


def ephemeral():
    return chromadb.EphemeralClient(settings=chromadb.Settings(anonymized_telemetry=False))


def test_collab_embedder_is_deterministic_normalized_and_train_only(ml100k):
    seqs = training_sequences(ml100k["train"])
    assert len(seqs) == 754 and all(len(s) >= 4 for s in seqs)
    a, b = CollabEmbedder().fit(seqs), CollabEmbedder().fit(seqs)
    histories = column(ml100k["test"], "history_item_ids")
    va, vb = a.embed(histories), b.embed(histories)
    np.testing.assert_array_equal(va, vb)
    assert va.dtype == np.float32 and np.allclose(np.linalg.norm(va, axis=1), 1, atol=1e-5)
    assert set(a.item_index) == {i for s in seqs for i in s}  # items seen in training only
    assert a.id == b.id and CollabEmbedder(dim=32).fit(seqs).id != a.id
    assert CollabEmbedder().fit(seqs[:-1]).id != a.id  # other data, other id


def test_collab_vectors_carry_signal(ml100k):
    emb = CollabEmbedder().fit(training_sequences(ml100k["train"]))
    v = emb.embed([[50, 181, 172], [50, 181, 172, 1], [1, 2, 3]])  # Star Wars, Return of the Jedi, Empire
    assert v[0] @ v[1] > v[0] @ v[2]


def test_unfitted_embedder_says_how_to_fix():
    with pytest.raises(Exception, match="call fit"):
        CollabEmbedder().embed([[1]])


def test_exact_top_k_matches_sorting():
    rng = np.random.default_rng(0)
    pool, queries = l2_normalize(rng.normal(size=(500, 8))), l2_normalize(rng.normal(size=(7, 8)))
    idx, sims = exact_top_k(pool, queries, 5, batch_size=3)
    ref = np.argsort(-(queries @ pool.T), axis=1)[:, :5]
    np.testing.assert_array_equal(idx, ref)
    assert np.all(np.diff(sims, axis=1) <= 0)


def _toy_index(client, n=400, seed=0):
    rng = np.random.default_rng(seed)
    vectors = l2_normalize(rng.normal(size=(n, 16)))
    ids = [f"train/u{i % 20}/{i}" for i in range(n)]
    users = [f"u{i % 20}" for i in range(n)]
    index = UserIndex(client, f"toy-{uuid.uuid4().hex[:8]}")
    index.build(ids, vectors, users, list(range(n)), [1000 + i for i in range(n)])
    return index, vectors, users


def test_build_is_idempotent_and_batches_are_per_query():
    client = ephemeral()
    index, vectors, _ = _toy_index(client)
    assert index.count() == 400
    assert index.build([f"train/u{i % 20}/{i}" for i in range(400)], vectors, ["x"] * 400, [0] * 400, [0] * 400) == 0
    assert index.count() == 400
    queries = vectors[[3, 150, 299]]
    found = index.query(queries, 10, ["new", "new", "new"], [None, None, None], distinct_users=False)
    exact, _ = exact_top_k(vectors, queries, 10)
    for q in range(3):
        got = [int(nb.example_id.rsplit("/", 1)[1]) for nb in found[q]]
        assert got[0] == [3, 150, 299][q]  # each query gets its own rows (the old ChromadbRM bug)
        assert len(set(got) & set(exact[q].tolist())) >= 9  # HNSW ~ exact at this size


def test_exclusions_own_user_and_future_are_never_returned():
    index, vectors, users = _toy_index(ephemeral())
    stats = QueryStats()
    queries = vectors[[5, 390]]
    found = index.query(queries, 10, [users[5], users[390]], [1000 + 200, 1000 + 390], overfetch=1, stats=stats)
    for q, (user, t) in enumerate([(users[5], 1200), (users[390], 1390)]):
        assert len(found[q]) == 10
        assert all(nb.user_id != user and nb.timestamp < t for nb in found[q])
        assert all(a.score >= b.score for a, b in zip(found[q], found[q][1:]))
    assert stats.excluded["same_user"] >= 2 and stats.excluded["not_before_query_time"] > 0
    assert stats.refetched >= 1 and stats.short == 0  # overfetch=1 cannot be enough: counted, then fixed


def test_neighbours_are_distinct_users_each_with_their_most_similar_allowed_window():
    index, vectors, users = _toy_index(ephemeral())  # 400 windows of 20 users
    times = [1000 + i for i in range(400)]
    (found,) = index.query(vectors[[399]], 8, [users[399]], [times[399]], example_ids=["train/u19/399"])
    assert len({nb.user_id for nb in found}) == len(found) == 8
    sims = vectors[:399] @ vectors[399]
    best = {}  # exact: each other user's most similar window before the query time
    for i in np.argsort(-sims):
        if users[i] != users[399] and times[i] < times[399]:
            best.setdefault(users[i], int(i))
    expected = sorted(best.values(), key=lambda i: -sims[i])[:8]
    assert [int(nb.example_id.rsplit("/", 1)[1]) for nb in found] == expected
    (windows,) = index.query(vectors[[399]], 8, [users[399]], [times[399]], distinct_users=False)
    assert len({nb.user_id for nb in windows}) < 8  # without the rule, one user's windows repeat


def test_the_query_itself_is_excluded_and_rows_without_users_are_refused():
    from adaptrec_prompts.errors import LeakageError

    index, vectors, users = _toy_index(ephemeral())
    (found,) = index.query(vectors[[7]], 5, ["someone-else"], [None], example_ids=["train/u7/7"],
                           distinct_users=False)
    assert "train/u7/7" not in [nb.example_id for nb in found]  # even with no user or time rule to catch it
    with pytest.raises(LeakageError, match="no user id"):
        index.query(vectors[[7]], 5, [None], [None], example_ids=["train/u7/7"])


def test_changed_embedder_or_data_gives_a_new_collection():
    a = collection_name("ml-100k", "collab-x-fit1", "hash1")
    assert a != collection_name("ml-100k", "collab-y-fit1", "hash1") != collection_name("ml-100k", "collab-x-fit1",
                                                                                         "hash2")
    assert a.startswith("ml-100k-collab-")


def test_neighbors_pipeline_embedded_respects_leakage_rules(gr, tmp_path):
    out = tmp_path / "gr-nb"
    assert main(["index", "neighbors", "--data", str(gr), "--chroma-path", str(tmp_path / "chroma"),
                 "--out", str(out), "--n", "5"]) == 0
    ddict, checked = check_neighbour_rules(out)
    assert checked > 50
    valid = ddict["valid"][0]
    assert len(valid["neighbor_history_titles"]) == len(valid["neighbor_next_titles"]) <= 5
    manifest = load_manifest(out)
    assert manifest["neighbors"]["n"] == 5 and manifest["source_data_hash"] == load_manifest(gr)["data_hash"]
    # building again reuses the collection (no duplicates)
    assert main(["index", "build", "--data", str(gr), "--chroma-path", str(tmp_path / "chroma")]) == 0
    client = make_client(path=tmp_path / "chroma")
    (col,) = client.list_collections()
    assert col.count() == ddict["train"].num_rows


def test_a_sampled_pool_indexes_only_its_sample_and_keeps_the_rules(gr, tmp_path):
    from adaptrec_prompts.retrieval.index import pool_rows

    train = datasets.load_from_disk(str(gr))["train"]
    rows = pool_rows(train.num_rows, 40, seed=3)
    assert rows == sorted(set(rows)) and len(rows) == 40 and rows == pool_rows(train.num_rows, 40, seed=3)
    assert rows != pool_rows(train.num_rows, 40, seed=4) and pool_rows(train.num_rows, None) == list(
        range(train.num_rows))
    out = tmp_path / "gr-nb"
    assert main(["index", "neighbors", "--data", str(gr), "--chroma-path", str(tmp_path / "chroma"), "--out", str(out),
                 "--n", "5", "--splits", "valid,test,test_extended", "--pool-size", "40", "--pool-seed", "3"]) == 0
    ddict, checked = check_neighbour_rules(out)
    sample = {train[r]["example_id"] for r in rows}
    used = {e for split in ("valid", "test", "test_extended") for ids in column(ddict[split], "neighbor_example_ids") for e in ids}
    assert checked > 40 and used <= sample
    (col,) = make_client(path=tmp_path / "chroma").list_collections()
    assert col.count() == 40 and (col.metadata["pool_size"], col.metadata["pool_seed"]) == (40, 3)
    assert load_manifest(out)["neighbors"]["pool"] == {"size": 40, "train_rows": train.num_rows, "seed": 3}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def chroma_server(tmp_path):
    beside = Path(sys.executable).parent / "chroma"  # the venv's CLI, also when the venv is not activated
    chroma = str(beside) if beside.is_file() else shutil.which("chroma")
    if chroma is None:
        pytest.skip("the `chroma` CLI is not installed (pip install chromadb)")
    port = _free_port()
    proc = subprocess.Popen([chroma, "run", "--path", str(tmp_path / "server"), "--host", "127.0.0.1", "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                make_client(url=url).heartbeat()
                break
            except Exception:
                time.sleep(0.2)
        else:
            raise RuntimeError("chroma run did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_server_mode_gives_the_same_neighbours(gr, tmp_path, chroma_server):
    embedded, served = tmp_path / "embedded", tmp_path / "served"
    emb = make_embedder("collab", gr)
    add_neighbors(gr, embedded, open_index(gr, emb, make_client(path=tmp_path / "c")), emb, n=5,
                  splits=["valid", "test"])
    add_neighbors(gr, served, open_index(gr, emb, make_client(url=chroma_server)), emb, n=5, splits=["valid", "test"])
    a, b = datasets.load_from_disk(str(embedded)), datasets.load_from_disk(str(served))
    for split in ("valid", "test"):
        assert column(a[split], "neighbor_example_ids") == column(b[split], "neighbor_example_ids")
        assert any(column(a[split], "neighbor_example_ids"))


def test_lm_embedder_with_tiny_model(tiny_model, ml100k):
    from adaptrec_prompts.data.render import load_template

    titles = dict(zip(column(ml100k["test"], "target_item_id"), column(ml100k["test"], "target_title")))
    for row in ml100k["test"].select(range(4)):
        titles.update(zip(row["history_item_ids"], row["history_titles"]))
    emb = LMEmbedder(tiny_model, titles, load_template("movies").render_history, batch_size=3)
    histories = column(ml100k["test"].select(range(4)), "history_item_ids")
    batched = emb.embed(histories)
    single = np.concatenate([emb.embed([h]) for h in histories])
    np.testing.assert_allclose(batched, single, atol=1e-5)  # padding does not change a history's vector
    assert batched.shape == (4, 32) and np.allclose(np.linalg.norm(batched, axis=1), 1, atol=1e-5)
    assert emb.id.startswith("lm-micro-")


def test_lm_embedder_reads_a_tied_checkpoint_that_stores_only_lm_head(tiny_model, ml100k, tmp_path):
    """The Gemma dense copy keeps its tied embedding under lm_head.weight only; the embedder must use it."""
    import torch
    from safetensors.torch import load_file, save_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from adaptrec_prompts.data.render import load_template

    tok = AutoTokenizer.from_pretrained(tiny_model)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(1)
    model = LlamaForCausalLM(config).eval()
    config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    save_model(model, str(tmp_path / "model.safetensors"))
    assert "model.embed_tokens.weight" not in load_file(str(tmp_path / "model.safetensors"))  # the tricky layout
    render = load_template("movies").render_history
    rows = ml100k["test"].select(range(3))
    titles = {i: t for r in rows for i, t in zip(r["history_item_ids"], r["history_titles"])}
    got = LMEmbedder(tmp_path, titles, render).embed(column(rows, "history_item_ids"))
    with torch.no_grad():
        want = []
        for r in rows:
            ids = tok(render(r["history_titles"]), return_tensors="pt")
            want.append(model.model(**ids).last_hidden_state.mean(1)[0].numpy())
    np.testing.assert_allclose(got, l2_normalize(np.stack(want)), atol=1e-5)


def test_text_embedder_without_the_extra_says_how_to_install():
    import importlib.util

    from adaptrec_prompts.errors import ConfigError
    from adaptrec_prompts.retrieval.embedders import TextEmbedder

    if importlib.util.find_spec("sentence_transformers") is not None:
        pytest.skip("sentence-transformers is installed; no tiny sentence-transformers model can be built offline here")
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[text\]'"):
        TextEmbedder("/nonexistent", {}, str)
