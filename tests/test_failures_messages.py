"""Faults that used to end in a traceback or a hang, one test each: each now ends in a message that names the key,
URL, model, option or file and the fix, before the run starts where one probe can tell (issue 23, "Tracebacks
and a hang that should be messages"). Servers are real HTTP servers on 127.0.0.1."""

import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from adaptrec_prompts.cli.app import main
from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.evaluation.results import read_log
from adaptrec_prompts.utils.testing import MockOpenAIServer

ANSWER = "[[ ## answer ## ]]\n1\n\n[[ ## completed ## ]]"


class _Server:
    """An HTTP server on 127.0.0.1 answering GET and POST with fixed (status, body, content type); counts
    the POSTs (chat requests)."""

    def __init__(self, get=(404, '{"detail": "Not Found"}', "application/json"), post=None):
        self.posts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status, body, kind):
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                self._reply(*get)

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.posts += 1
                self._reply(*(post or get))

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


class _Silent:
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.accepted = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self):
        while True:
            try:
                self.accepted.append(self.sock.accept()[0])
            except OSError:
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def _eval(data, out, url, *extra, lm="openai/mock"):
    return main(["eval", "--data", str(data), "--program", "none", "--lm", lm, "--api-base", url, "--mode",
                 "generate", "--limit", "2", "--out", str(out), "--no-progress", *extra])


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    for var in ("OPENAI_BASE_URL", "OPENAI_API_BASE"):
        monkeypatch.delenv(var, raising=False)


AUTH = (401, json.dumps({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                   "code": "invalid_api_key"}}), "application/json")


def test_a_refused_key_is_named_before_the_run_starts(ml100k_prepared, tmp_path, capsys, key):
    with _Server(get=AUTH) as server:
        assert _eval(ml100k_prepared, tmp_path / "run", server.url) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"the server at {server.url} refused the API key (HTTP 401" in err
    assert "set OPENAI_API_KEY to a key it accepts" in err
    assert server.posts == 0 and not (tmp_path / "run").exists()  # the probe told; no chat request, no folder


def test_a_key_refused_at_the_first_request_is_named_and_leaves_no_run(ml100k_prepared, tmp_path, capsys, key):
    # a server without a model listing (GET 404): the first chat request is the probe
    with _Server(post=AUTH) as server:
        assert _eval(ml100k_prepared, tmp_path / "run", server.url) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "refused the API key (HTTP 401" in err and "OPENAI_API_KEY" in err
    assert server.posts == 1 and not (tmp_path / "run").exists()


def test_a_wrong_url_is_named_and_the_corrected_command_runs_into_the_same_folder(ml100k_prepared, tmp_path, capsys,
                                                                                  key):
    (tmp_path / "run").mkdir()  # a folder the user made: kept, but its failed start is not a run
    with _Server() as server:  # 404 on everything: --api-base without /v1, or another service
        assert _eval(ml100k_prepared, tmp_path / "run", server.url) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "answered HTTP 404 (not found) for --lm openai/mock" in err
    assert f"--api-base {server.url} should be the API root, usually ending in /v1" in err
    assert not read_log(tmp_path / "run" / "predictions.jsonl")
    with MockOpenAIServer(lambda number, body: ("ok", ANSWER)) as good:
        assert _eval(ml100k_prepared, tmp_path / "run", good.url) == 0  # was: "holds a run with a different config"
    assert len(read_log(tmp_path / "run" / "predictions.jsonl")) == 2


def test_an_unknown_model_is_named(ml100k_prepared, tmp_path, capsys, key):
    missing = (404, json.dumps({"error": {"message": "The model `nope` does not exist", "type": "NotFoundError",
                                          "code": 404}}), "application/json")
    with _Server(post=missing) as server:
        assert _eval(ml100k_prepared, tmp_path / "run", server.url, lm="openai/nope") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "does not serve the model named by --lm openai/nope" in err
    assert "/models lists what it serves" in err and not (tmp_path / "run").exists()


def test_a_missing_key_is_named_before_anything_is_sent(ml100k_prepared, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with MockOpenAIServer(lambda number, body: ("ok", ANSWER)) as server:
        assert _eval(ml100k_prepared, tmp_path / "run", server.url) == 2
        assert not server.requests
    err = capsys.readouterr().err
    assert "Traceback" not in err and "OPENAI_API_KEY is not set: --lm openai/mock needs it" in err
    assert "export OPENAI_API_KEY=unused" in err and not (tmp_path / "run").exists()


def test_an_lm_name_without_a_provider_is_refused_before_the_run(ml100k_prepared, tmp_path, capsys, key):
    assert main(["eval", "--data", str(ml100k_prepared), "--program", "none", "--lm", "bogus", "--mode", "generate",
                 "--limit", "2", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--lm 'bogus' names no model a provider is known for" in err
    assert "hf:PATH" in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["probe", "first request"])
def test_a_reply_that_is_not_json_names_the_server(ml100k_prepared, tmp_path, capsys, key, where):
    page = (200, "<html>hello</html>", "text/html")
    with (_Server(get=page) if where == "probe" else _Server(post=page)) as server:
        assert _eval(ml100k_prepared, tmp_path / "run", server.url) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{server.url}" in err and "not JSON" in err and "/v1" in err
    assert server.posts == (0 if where == "probe" else 1) and not (tmp_path / "run").exists()


def test_a_server_that_accepts_and_never_answers_is_refused_within_the_timeout(ml100k_prepared, tmp_path, capsys,
                                                                               caplog, key):
    started = time.perf_counter()
    with _Silent() as server:
        assert _eval(ml100k_prepared, tmp_path / "run", server.url, "--timeout", "1") == 2
    assert time.perf_counter() - started < 20  # was: timeout x 4 attempts x 3 harness rounds per example
    err = capsys.readouterr().err
    assert f"the server at {server.url} (--api-base) accepted no request or sent no answer" in err
    assert "within --timeout 1 s" in err and not (tmp_path / "run").exists()
    assert any(f"the server at {server.url} has not answered GET {server.url}/models after" in r.getMessage()
               for r in caplog.records)  # said while waiting


@pytest.mark.parametrize("route", ["--api-base (DSPy's native client)", "OPENAI_BASE_URL (LiteLLM)"])
def test_a_hung_request_is_bounded_by_timeout_times_attempts_and_reported_as_slow(ml100k_prepared, tmp_path, caplog,
                                                                                  capsys, key, monkeypatch, route):
    # the listing answers nothing useful (GET is not offered: 501), chat requests never answer within the timeout
    started = time.perf_counter()
    with MockOpenAIServer(lambda number, body: ("sleep", 6)) as server:
        args = ["eval", "--data", str(ml100k_prepared), "--program", "none", "--lm", "openai/mock", "--mode",
                "generate", "--limit", "1", "--out", str(tmp_path / "run"), "--no-progress", "--timeout", "1",
                "--num-retries", "1", "--retries", "2"]
        if route.startswith("--api-base"):
            args += ["--api-base", server.url]
        else:
            monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        code = main(args)
        requests = len(server.requests)
    elapsed = time.perf_counter() - started
    assert code == 2 and "1 of 1 examples failed" in capsys.readouterr().err
    # dspy.LM's 2 attempts (num_retries 1; LiteLLM's own retries are off), not 2 x 3 harness rounds
    assert requests == 2, requests
    (record,) = read_log(tmp_path / "run" / "predictions.jsonl").values()
    assert "imeout" in record["error"] and record["latency_s"] < 3 + 6  # bound 1 s x 2 + 1 s backoff; was 12 s+
    assert elapsed < 40
    slow = [r.getMessage() for r in caplog.records if "slow request" in r.getMessage()]
    assert slow and f"openai/mock at {server.url} has not answered after" in slow[0]
    assert "each attempt gives up after 1 s (--timeout), 2 attempts (--num-retries 1): at most 3 s" in slow[0]


@pytest.mark.parametrize("option, value, message", [
    ("--timeout", "0", "argument --timeout: must be a number of seconds > 0 (e.g. 120), got 0"),
    ("--timeout", "nan", "argument --timeout: must be a number of seconds > 0 (e.g. 120), got nan"),
    ("--num-retries", "-1", "argument --num-retries: must be a whole number >= 0 (0: no retry), got -1"),
    ("--retries", "-1", "argument --retries: must be a whole number >= 0 (0: no retry), got -1"),
])
def test_request_settings_out_of_range_are_refused_before_the_run_folder(ml100k_prepared, tmp_path, capsys, option,
                                                                         value, message):
    with pytest.raises(SystemExit):
        main(["eval", "--data", str(ml100k_prepared), "--program", "none", "--lm", "openai/mock", "--out",
              str(tmp_path / "run"), option, value])
    assert message in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("field, value, message", [
    ("timeout", 0, "--timeout 0: must be a number of seconds > 0"),
    ("timeout", float("inf"), "--timeout inf: must be a number of seconds > 0"),
    ("num_retries", -1, "--num-retries -1: must be a whole number >= 0"),
    ("retries", -2, "--retries -2: must be a whole number >= 0"),
])
def test_runconfig_refuses_request_settings_out_of_range(tmp_path, field, value, message):
    from adaptrec_prompts.evaluation.runs import RunConfig

    with pytest.raises(ConfigError, match=message):
        RunConfig(data=tmp_path, out=tmp_path / "run", **{field: value})


def _baseline_run(data, out, split):
    assert main(["eval", "--data", str(data), "--program", "baseline:random", "--split", split, "--limit", "3",
                 "--out", str(out), "--no-progress"]) == 0


def test_compare_names_a_missing_folder_and_different_splits(ml100k_prepared, tmp_path, capsys):
    _baseline_run(ml100k_prepared, tmp_path / "test", "test")
    _baseline_run(ml100k_prepared, tmp_path / "valid", "valid")
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "test"), str(tmp_path / "nope")]) == 2
    assert f"run B '{tmp_path / 'nope'}': no such folder" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "empty"), str(tmp_path / "test")]) == 2
    assert "holds no predictions" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "test"), str(tmp_path / "valid")]) == 2
    err = capsys.readouterr().err
    assert "the runs scored different splits" in err and "'test'" in err and "'valid'" in err
    assert "share no scored example" not in err


def _program(tmp_path, change=None):
    from adaptrec_prompts.data.render import load_template
    from adaptrec_prompts.programs.adaptrec import AdaptRec
    from adaptrec_prompts.programs.saving import save_program

    path = save_program(AdaptRec(load_template("movies"), selection="none", mode="generate"), tmp_path / "p.json")
    if change:
        payload = json.loads(path.read_text())
        change(payload)
        path = tmp_path / "changed.json"
        path.write_text(json.dumps(payload))
    return path


def test_programs_diff_names_a_missing_or_truncated_file(tmp_path, capsys):
    good = _program(tmp_path)
    truncated = tmp_path / "truncated.json"
    truncated.write_text(good.read_text()[:200])
    assert main(["programs", "diff", str(good), str(tmp_path / "nope.json")]) == 2
    assert f"'{tmp_path / 'nope.json'}': no such program file" in capsys.readouterr().err
    assert main(["programs", "diff", str(good), str(truncated)]) == 2
    err = capsys.readouterr().err
    assert f"{truncated}: not valid JSON at line" in err and "damaged or truncated" in err
    assert main(["programs", "diff", str(good), str(good)]) == 0


def _eval_local(data, out, *extra, model):
    # a model folder that cannot load: each check below must speak before any model is loaded
    return main(["eval", "--data", str(data), "--program", "none", "--lm", f"hf:{model}", "--mode", "generate",
                 "--limit", "1", "--out", str(out), "--no-progress", *extra])


def test_a_missing_adapter_folder_is_named_before_the_model_loads(ml100k_prepared, tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "not-an-adapter").mkdir()
    assert _eval_local(ml100k_prepared, tmp_path / "run", "--adapter", str(tmp_path / "missing"),
                       model=tmp_path / "model") == 2
    assert f"--adapter '{tmp_path / 'missing'}': no such folder" in capsys.readouterr().err
    assert _eval_local(ml100k_prepared, tmp_path / "run", "--adapter", str(tmp_path / "not-an-adapter"),
                       model=tmp_path / "model") == 2
    assert "no adapter_config.json in the folder" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_misspelt_template_placeholder_fails_when_the_template_loads(ml100k_prepared, tmp_path, capsys):
    from adaptrec_prompts.data.render import TEMPLATES_DIR, load_template

    bad = tmp_path / "bad.toml"
    bad.write_text((TEMPLATES_DIR / "movies.toml").read_text().replace("{titles}.", "{tittles}.", 1))
    with pytest.raises(ConfigError, match=r"history = .*\{tittles\} is not a placeholder of history; did you mean "
                                          r"\{titles\}\?"):
        load_template(bad)
    bad.write_text((TEMPLATES_DIR / "movies.toml").read_text().replace("{number}. {title}", "{number. {title}"))
    with pytest.raises(ConfigError, match=r"candidate = .*write a literal brace as \{\{ or \}\}"):
        load_template(bad)
    (tmp_path / "model").mkdir()
    assert _eval_local(ml100k_prepared, tmp_path / "run", "--template", str(bad), model=tmp_path / "model") == 2
    assert f"{bad}: invalid template: candidate" in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("change, message", [
    (lambda p: p["state"]["recommender.recommend"].update(demos="oops"),
     "state['recommender.recommend']['demos']: expected a list of JSON values, got str"),
    (lambda p: p["state"]["recommender.recommend"].update(forward=5),
     "state['recommender.recommend']['forward']: not a key save_program writes"),
    (lambda p: p["config"]["template"].update(candidate="{numbr}. {title}"),
     "config.template is not a valid template: candidate = '{numbr}. {title}': {numbr} is not a placeholder"),
])
def test_a_malformed_program_file_is_named_before_the_model_loads(ml100k_prepared, tmp_path, capsys, change, message):
    path = _program(tmp_path, change)
    (tmp_path / "model").mkdir()
    assert main(["eval", "--data", str(ml100k_prepared), "--program", str(path), "--lm", f"hf:{tmp_path / 'model'}",
                 "--limit", "1", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{path}: " in err and message in err, err


def _limited(size):
    """preexec_fn: files of at most `size` bytes (RLIMIT_FSIZE), and a write past it raises EFBIG instead of
    killing the process (SIGXFSZ ignored): a full disk, as a process sees it, without root."""
    import resource
    import signal

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return apply


def test_a_full_disk_during_eval_names_the_file_and_keeps_a_valid_log(ml100k_prepared, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "adaptrec_prompts.cli", "eval", "--data", str(ml100k_prepared),
                           "--program", "baseline:popularity", "--split", "test_extended", "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, timeout=300, preexec_fn=_limited(65536))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"no space left writing {out / 'predictions.jsonl'} (File too large)" in proc.stderr
    assert "finished examples are kept; run the same command again" in proc.stderr
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert lines and all(json.loads(line) for line in lines)  # no torn last line


def test_a_full_disk_during_data_prepare_names_the_folder_and_leaves_nothing(goodreads_raw, tmp_path):
    out = tmp_path / "prepared"
    proc = subprocess.run([sys.executable, "-m", "adaptrec_prompts.cli", "data", "prepare", "--dataset", "goodreads",
                           "--raw-dir", str(goodreads_raw), "--k-candidates", "10", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, preexec_fn=_limited(16384))  # train: 53 kB
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"no space left writing the prepared folder '{out}' (File too large)" in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".prepared.partial-*"))


def test_sigterm_during_a_threaded_api_run_says_what_was_saved(ml100k_prepared, tmp_path):
    import signal

    def script(number, body):  # the first answers come at once, then every request hangs
        return ("ok", ANSWER) if number < 3 else ("sleep", 30)

    out = tmp_path / "run"
    env = {**__import__("os").environ, "OPENAI_API_KEY": "sk-test-not-real"}
    with MockOpenAIServer(script) as server:
        proc = subprocess.Popen([sys.executable, "-m", "adaptrec_prompts.cli", "eval", "--data", str(ml100k_prepared),
                                 "--program", "none", "--lm", "openai/mock", "--api-base", server.url, "--mode",
                                 "generate", "--limit", "20", "--threads", "4", "--out", str(out), "--no-progress"],
                                stderr=subprocess.PIPE, text=True, env=env)
        log = out / "predictions.jsonl"
        deadline = time.monotonic() + 120
        while len(read_log(log)) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=20)  # not held up by the 4 requests still in flight
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("the run did not stop after SIGTERM") from None
    assert proc.returncode == 143 and "Traceback" not in err, err[-2000:]
    saved = len(read_log(log))
    assert f"terminated: {saved} of 20 examples are saved in {out}; run the same command again to resume" in err
