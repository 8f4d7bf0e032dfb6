"""Failure cases a careful new user hits, one test each: every refusal names the file or option and the fix,
nothing finished is lost, nothing wrong is written with exit 0. Add a row here for each new command."""

import json
import subprocess
import sys
import time

import pytest

from adaptrec_prompts.cli.app import main
from adaptrec_prompts.errors import ConfigError, Interrupted, RunInUseError
from adaptrec_prompts.evaluation.harness import evaluate
from adaptrec_prompts.evaluation.results import read_log


class _Baseline:
    """A baseline-like program that ranks the candidates in list order (optionally failing on one example)."""

    def __init__(self, fail_on: str | None = None, exc: BaseException | None = None):
        self.fail_on, self.exc = fail_on, exc

    def config(self) -> dict:
        return {"name": "list-order"}

    def predict_row(self, row):
        if row["example_id"] == self.fail_on:
            raise self.exc
        return {"raw": None, "answer": None, "ranking": list(row["candidate_item_ids"]), "valid": True, "reason": "",
                "selection": None}


def _rows(ml100k, n):
    return ml100k["test"].select(range(n)).to_list()


def test_a_torn_last_line_is_cut_before_resuming(ml100k, tmp_path):
    rows = _rows(ml100k, 4)
    evaluate(_Baseline(), rows[:2], tmp_path / "run", {"a": 1}, progress=False)
    log = tmp_path / "run" / "predictions.jsonl"
    log.write_bytes(log.read_bytes() + b'{"example_id": "torn", "hit1": ')  # killed mid-write
    evaluate(_Baseline(), rows, tmp_path / "run", {"a": 1}, progress=False)
    lines = log.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines)  # valid JSON Lines again


def test_two_processes_cannot_share_a_run_folder(ml100k, tmp_path):
    (tmp_path / "run").mkdir()
    with open(tmp_path / "run" / ".lock", "w") as handle:
        handle.write("pid 12345")
        handle.flush()
        holder = subprocess.Popen([sys.executable, "-c", f"import fcntl, time; h = open({str(tmp_path / 'run' / '.lock')!r}); "
                                   "fcntl.flock(h, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(30)"],
                                  stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUseError, match=r"in use by pid 12345; wait for it to finish or choose another --out"):
            evaluate(_Baseline(), _rows(ml100k, 2), tmp_path / "run", {"a": 1}, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "run" / "predictions.jsonl").exists()


def test_no_rows_is_refused_not_reported_as_nan(tmp_path):
    with pytest.raises(ConfigError, match="0 rows; check --split, --limit"):
        evaluate(_Baseline(), [], tmp_path / "run", {"a": 1}, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_limit_below_one_is_refused_by_the_cli(ml100k_prepared, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--data", str(ml100k_prepared), "--program", "baseline:random", "--limit", "-1",
              "--out", str(tmp_path / "run")])
    assert "--limit: must be >= 1, got -1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_ctrl_c_says_what_is_saved_and_how_to_resume(ml100k, tmp_path):
    rows = _rows(ml100k, 5)
    with pytest.raises(Interrupted, match=r"2 of 5 examples are saved in .*run; run the same command again"):
        evaluate(_Baseline(rows[2]["example_id"], KeyboardInterrupt()), rows, tmp_path / "run", {"a": 1},
                 progress=False)
    assert len(read_log(tmp_path / "run" / "predictions.jsonl")) == 2


def test_ctrl_c_in_the_cli_prints_one_line_and_exits_130(ml100k_prepared, tmp_path):
    import signal

    script = ("import time\n"
              "from adaptrec_prompts.evaluation import harness\n"
              "orig = harness._run_one\n"
              "def slow(*a, **k):\n"
              "    time.sleep(0.02)\n"
              "    return orig(*a, **k)\n"
              "harness._run_one = slow\n"
              "from adaptrec_prompts.cli.app import main\n"
              f"raise SystemExit(main(['eval', '--data', {str(ml100k_prepared)!r}, '--program', 'baseline:random', "
              f"'--split', 'test_extended', '--out', {str(tmp_path / 'run')!r}, '--no-progress']))\n")
    # a terminal's Ctrl-C: SIGINT at its default disposition (a library in this test process may have set it to
    # "ignore", which a child would inherit, and Python then installs no KeyboardInterrupt handler)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = tmp_path / "run" / "predictions.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and log.stat().st_size) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    for _ in range(12):  # Ctrl-C once examples are being written (again if a loaded machine let it slip by)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=10)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        proc.kill()
        raise AssertionError("the run did not stop after Ctrl-C")
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    saved = len(read_log(log))
    assert f"{saved} of 9215 examples are saved in" in err and "run the same command again to resume" in err


def test_an_unknown_split_is_refused_with_the_valid_ones(ml100k_prepared, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--data", str(ml100k_prepared), "--program", "baseline:random", "--split", "nonexistent",
              "--out", str(tmp_path / "run")])
    assert "invalid choice: 'nonexistent' (choose from 'train', 'valid', 'test', 'test_extended')" in capsys.readouterr().err


def test_more_neighbours_than_the_data_holds_is_refused(goodreads_raw, tmp_path, capsys):
    from conftest import goodreads_with_neighbors

    _, nb = goodreads_with_neighbors(tmp_path, goodreads_raw, 3, ["test"])
    assert main(["eval", "--data", str(nb), "--program", "baseline:userknn", "--n", "100",
                 "--out", str(tmp_path / "run")]) == 2
    assert "--n 100: " in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_non_utf8_bytes_name_the_file_and_line(tmp_path):
    from adaptrec_prompts.data import load_llara
    from adaptrec_prompts.errors import DataError

    (tmp_path / "id2name.txt").write_bytes(b"0::Abba\n1::Bj\xf6rk\n")
    with pytest.raises(DataError, match=r"id2name.txt:2: not valid utf-8 .*re-download it or convert it"):
        load_llara(tmp_path)


def test_an_api_run_where_examples_failed_exits_non_zero_and_says_how_to_resume(ml100k_prepared, tmp_path, capsys,
                                                                                 monkeypatch):
    from adaptrec_prompts.utils.testing import MockOpenAIServer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    with MockOpenAIServer(lambda number, body: ("500", None)) as server:
        code = main(["eval", "--data", str(ml100k_prepared), "--program", "none", "--lm", "openai/mock",
                     "--api-base", server.url, "--mode", "generate", "--limit", "2", "--out", str(tmp_path / "run"),
                     "--no-progress", "--retries", "0", "--num-retries", "0"])
    assert code == 2
    err = capsys.readouterr().err
    assert "2 of 2 examples failed with provider/transport errors" in err and "run the same command again" in err


def test_damaged_llara_pickles_fail_with_the_file_named(llara_movielens_raw, ml100k_raw, tmp_path):
    import random

    from adaptrec_prompts.data import load_llara
    from adaptrec_prompts.errors import DataError

    good = (llara_movielens_raw / "Test_data.df").read_bytes()
    rng = random.Random(0)
    outcomes = {"refused": 0, "loaded": 0}
    for trial in range(600):  # three random bytes changed per file (seed 0 hit a TypeError and a SystemError)
        data = bytearray(good)
        for _ in range(3):
            data[rng.randrange(len(data))] = rng.randrange(256)
        folder = tmp_path / str(trial)
        folder.mkdir()
        (folder / "Test_data.df").write_bytes(bytes(data))
        try:
            load_llara(folder, ml100k_raw / "u.item")
            outcomes["loaded"] += 1
        except DataError as exc:  # UnsafePickleError is a DataError
            assert "Test_data.df" in str(exc)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and sum(outcomes.values()) == 600


def test_duplicate_raw_events_are_dropped_and_counted(ml100k_raw, tmp_path):
    import shutil

    from adaptrec_prompts.data.prepare import build
    from adaptrec_prompts.data.protocol import ProtocolConfig

    raw = tmp_path / "ml-100k"
    shutil.copytree(ml100k_raw, raw)
    lines = (raw / "u.data").read_text(encoding="latin-1").splitlines(keepends=True)
    (raw / "u.data").write_text("".join(lines + lines[:500]), encoding="latin-1")  # 500 rows twice
    ddict, _titles, manifest = build("ml-100k", raw, ProtocolConfig())
    assert manifest["loader_notes"]["duplicate_events_dropped"] == 500
    train = ddict["train"].select(range(3000))
    assert not any(t in h for t, h in zip(train["target_item_id"], train["history_item_ids"]))


def test_a_second_server_is_asked_not_answered_from_the_first_ones_cache(ml100k_prepared, tmp_path, monkeypatch):
    from adaptrec_prompts.utils.testing import MockOpenAIServer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    answer = "[[ ## answer ## ]]\n1\n\n[[ ## completed ## ]]"
    for name in ("a", "b"):
        with MockOpenAIServer(lambda number, body: ("ok", answer)) as server:
            assert main(["eval", "--data", str(ml100k_prepared), "--program", "none", "--lm", "openai/mock",
                         "--api-base", server.url, "--mode", "generate", "--limit", "2",
                         "--out", str(tmp_path / name), "--no-progress"]) == 0
            assert len(server.requests) == 2, name  # the same prompts, yet server b is asked too


def test_a_server_that_never_answers_times_out_instead_of_hanging(ml100k_prepared, tmp_path, capsys, monkeypatch):
    from adaptrec_prompts.utils.testing import MockOpenAIServer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    started = time.perf_counter()
    with MockOpenAIServer(lambda number, body: ("sleep", 20)) as server:
        code = main(["eval", "--data", str(ml100k_prepared), "--program", "none", "--lm", "openai/mock",
                     "--api-base", server.url, "--mode", "generate", "--limit", "1", "--out", str(tmp_path / "run"),
                     "--no-progress", "--timeout", "1", "--retries", "0", "--num-retries", "0"])
    assert code == 2 and time.perf_counter() - started < 15
    assert "1 of 1 examples failed with provider/transport errors" in capsys.readouterr().err
    (record,) = read_log(tmp_path / "run" / "predictions.jsonl").values()
    assert "imeout" in record["error"]


def test_chroma_problems_are_messages_not_tracebacks(tmp_path, capsys):
    from adaptrec_prompts.retrieval.index import make_client

    with pytest.raises(ConfigError, match=r"no Chroma server answers at http://127.0.0.1:9/.*chroma run"):
        make_client(url="http://127.0.0.1:9/")
    # the damaged-file case runs in its own process: a broken Chroma system must not stay in this one's cache
    script = ("import sys\nfrom adaptrec_prompts.retrieval.index import make_client\nfrom adaptrec_prompts.errors import "
              "ConfigError\npath = sys.argv[1]\nmake_client(path=path)\nif len(sys.argv) > 2:\n"
              "    import pathlib\n    f = pathlib.Path(path) / 'chroma.sqlite3'\n"
              "    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])\n")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "chroma"), "damage"], check=True, timeout=120)
    check = ("import sys\nfrom adaptrec_prompts.retrieval.index import make_client\nfrom adaptrec_prompts.errors import "
             "ConfigError\ntry:\n    make_client(path=sys.argv[1])\nexcept ConfigError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", check, str(tmp_path / "chroma")], capture_output=True, text=True,
                         timeout=120)
    assert "cannot be opened" in out.stdout and "damaged: delete the folder and rebuild" in out.stdout, out.stderr


def test_a_damaged_hnsw_file_is_detected_and_the_index_rebuilt(ml100k_prepared, tmp_path):
    import datasets
    from chromadb.api.client import SharedSystemClient

    from adaptrec_prompts.retrieval.embedders import make_embedder
    from adaptrec_prompts.retrieval.index import make_client
    from adaptrec_prompts.retrieval.index import open_index
    from adaptrec_prompts.retrieval.neighbors import add_neighbors

    embedder = make_embedder("collab", ml100k_prepared)
    index = open_index(ml100k_prepared, embedder, make_client(path=tmp_path / "chroma"), pool_size=3000)
    add_neighbors(ml100k_prepared, tmp_path / "intact", index, embedder, n=5, splits=["test"])
    del index
    SharedSystemClient.clear_system_cache()  # as a new process would: read the files again
    files = sorted((tmp_path / "chroma").rglob("data_level0.bin"))
    assert files, "expected an HNSW segment on disk"
    for f in files:  # truncate the HNSW graph; the SQLite catalogue (and its count) stays whole
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    index = open_index(ml100k_prepared, embedder, make_client(path=tmp_path / "chroma"), pool_size=3000)
    assert getattr(index, "rebuilt_after_damage", False) and index.count() == 3000
    add_neighbors(ml100k_prepared, tmp_path / "after", index, embedder, n=5, splits=["test"])
    before = datasets.load_from_disk(str(tmp_path / "intact"))["test"]["neighbor_example_ids"]
    assert datasets.load_from_disk(str(tmp_path / "after"))["test"]["neighbor_example_ids"] == before


def test_more_demonstrations_than_retrieved_users_is_refused(ml100k_prepared, tmp_path, capsys):
    assert main(["eval", "--data", str(ml100k_prepared), "--program", "static", "--m", "12", "--lm", "hf:unused",
                 "--out", str(tmp_path / "run")]) == 2
    assert "m_select (--m) must be between 1 and n_retrieve (--n) = 10, got 12" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_whole_last_record_without_its_newline_is_kept(ml100k, tmp_path):
    rows = _rows(ml100k, 3)
    evaluate(_Baseline(), rows[:2], tmp_path / "run", {"a": 1}, progress=False)
    log = tmp_path / "run" / "predictions.jsonl"
    log.write_bytes(log.read_bytes().rstrip(b"\n"))  # killed between the record and its newline
    results = evaluate(_Baseline(), rows, tmp_path / "run", {"a": 1}, progress=False)
    assert results["n"] == 3 and len(log.read_text().splitlines()) == 3


def test_a_record_torn_inside_a_multibyte_character_is_cut_not_a_crash(ml100k, tmp_path):
    rows = _rows(ml100k, 2)
    evaluate(_Baseline(), rows[:1], tmp_path / "run", {"a": 1}, progress=False)
    log = tmp_path / "run" / "predictions.jsonl"
    log.write_bytes(log.read_bytes() + '{"example_id": "x", "raw": "Amélie'.encode()[:-1])
    assert evaluate(_Baseline(), rows, tmp_path / "run", {"a": 1}, progress=False)["n"] == 2


def test_a_server_named_by_the_environment_is_not_answered_from_the_cache(ml100k_prepared, tmp_path, monkeypatch):
    from adaptrec_prompts.utils.testing import MockOpenAIServer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    answer = "[[ ## answer ## ]]\n1\n\n[[ ## completed ## ]]"
    args = ["eval", "--data", str(ml100k_prepared), "--program", "none", "--lm", "openai/mock", "--mode", "generate",
            "--limit", "2", "--no-progress"]
    with MockOpenAIServer(lambda number, body: ("ok", answer)) as first:
        monkeypatch.setenv("OPENAI_BASE_URL", first.url)
        assert main([*args, "--out", str(tmp_path / "a")]) == 0
    with MockOpenAIServer(lambda number, body: ("ok", answer)) as second:
        monkeypatch.setenv("OPENAI_BASE_URL", second.url)
        assert main([*args, "--out", str(tmp_path / "b")]) == 0
        assert len(first.requests) == 2 and len(second.requests) == 2


def test_preparing_empty_raw_files_is_refused(ml100k_raw, tmp_path):
    import shutil

    from adaptrec_prompts.data.prepare import build
    from adaptrec_prompts.data.protocol import ProtocolConfig
    from adaptrec_prompts.errors import DataError

    raw = tmp_path / "ml-100k"
    shutil.copytree(ml100k_raw, raw)
    (raw / "u.data").write_text("")
    with pytest.raises(DataError, match="0 training and 0 test examples; the files are empty or too small"):
        build("ml-100k", raw, ProtocolConfig())
