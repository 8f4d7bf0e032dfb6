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

from adaptrec_prompts.cli import main
from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.evaluation import read_log
from adaptrec_prompts.testing import MockOpenAIServer

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
                                                                               key):
    started = time.perf_counter()
    with _Silent() as server:
        assert _eval(ml100k_prepared, tmp_path / "run", server.url, "--timeout", "1") == 2
    assert time.perf_counter() - started < 20  # was: timeout x 4 attempts x 3 harness rounds per example
    err = capsys.readouterr().err
    assert f"the server at {server.url} (--api-base) accepted no request or sent no answer" in err
    assert "within --timeout 1 s" in err and not (tmp_path / "run").exists()


def test_a_hung_request_is_bounded_by_timeout_times_attempts_and_reported_as_slow(ml100k_prepared, tmp_path, caplog,
                                                                                  capsys, key):
    # the listing answers (GET is not offered: 501), chat requests never do within the timeout
    started = time.perf_counter()
    with MockOpenAIServer(lambda number, body: ("sleep", 6)) as server:
        code = _eval(ml100k_prepared, tmp_path / "run", server.url, "--limit", "1", "--timeout", "1",
                     "--num-retries", "1", "--retries", "2")
        requests = len(server.requests)
    elapsed = time.perf_counter() - started
    assert code == 2 and "1 of 1 examples failed" in capsys.readouterr().err
    # dspy.LM's 2 attempts (num_retries 1), not 2 x 3 harness rounds: at most 1 x 2 + 1 s backoff per example
    assert requests == 2, requests
    (record,) = read_log(tmp_path / "run" / "predictions.jsonl").values()
    assert "imeout" in record["error"] and record["latency_s"] < 3 + 2
    assert elapsed < 30
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
    from adaptrec_prompts.runs import RunConfig

    with pytest.raises(ConfigError, match=message):
        RunConfig(data=tmp_path, out=tmp_path / "run", **{field: value})
