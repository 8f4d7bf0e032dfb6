"""eval/fewshot_gpt4.py against a real local OpenAI-compatible HTTP endpoint on 127.0.0.1."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adaptrec_prompts.utils.testing import MockOpenAIServer
from conftest import goodreads_with_neighbors

SCRIPT = Path(__file__).resolve().parents[1] / "eval" / "fewshot_gpt4.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("fewshot_gpt4", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gr_nb(tmp_path_factory, goodreads_raw):
    return goodreads_with_neighbors(tmp_path_factory.mktemp("grnb"), goodreads_raw, 5, ["test_extended"])[1]


def test_missing_key_exits_before_any_work(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path / "nothing"), "--out", str(out)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "OPENAI_API_KEY is not set" in proc.stderr and "--api-base" in proc.stderr
    assert not out.exists()


def _script(i, body):
    system = body["messages"][0]["content"]
    if i == 0:
        return "429", None  # the first call is rate limited, then retried
    if i == 3:
        return "sleep", 2.5  # longer than --timeout: retried
    if "selected_users" in system:
        return "ok", "[[ ## selected_users ## ]]\n[2, 1, 3]\n\n[[ ## completed ## ]]"
    return "ok", "[[ ## answer ## ]]\n1\n\n[[ ## completed ## ]]"


def test_request_path_retries_caches_and_never_writes_the_key(gr_nb, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-do-not-write-me")
    script = _load_script()
    out = tmp_path / "fewshot"
    args = ["--data", str(gr_nb), "--model", "openai/gpt-4o-mini", "--split", "test_extended", "--limit", "3", "--variants", "adaptive,none",
            "--m", "3", "--n", "5", "--threads", "1", "--timeout", "1", "--num-retries", "3", "--out", str(out)]
    with MockOpenAIServer(_script) as server:
        assert script.main(script.make_parser().parse_args([*args, "--api-base", server.url])) == 0
        first = len(server.requests)
        printed = capsys.readouterr().out
        assert "estimated cost $" in printed and "adaptive vs zero-shot" in printed
        # 3 examples x (stage 2 + stage 3) + 3 zero-shot = 9 calls, plus one 429 retry and one timeout retry
        assert first >= 11
        assert server.headers[0]["Authorization"] == "Bearer sk-do-not-write-me"  # sent, from the environment
        assert script.main(script.make_parser().parse_args([*args, "--api-base", server.url])) == 0
        assert len(server.requests) == first  # resumed from the logs: no new calls
    for variant in ("adaptive", "none"):
        results = json.loads((out / variant / "results.json").read_text())
        assert results["n"] == 3 and results["errors"] == 0 and results["prompt_tokens"] > 0
    written = "".join(p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file() and "cache" not in p.parts)
    assert "sk-do-not-write-me" not in written


def test_dry_run_prints_the_estimate_only(gr_nb, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    script = _load_script()
    out = tmp_path / "dry"
    assert script.main(script.make_parser().parse_args(["--data", str(gr_nb), "--out", str(out), "--dry-run",
                                                        "--split", "test_extended", "--limit", "2"])) == 0
    assert "prompt tokens" in capsys.readouterr().out and not out.exists()


def test_api_score_mode_reads_first_token_logprobs(ml100k, monkeypatch):
    import dspy

    from adaptrec_prompts.backends import api_lm
    from adaptrec_prompts.data.render import load_template
    from adaptrec_prompts.programs.adaptrec import AdaptRec
    from adaptrec_prompts.utils import testing

    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    plain = testing.chat_response

    def with_logprobs(text, model="mock"):
        r = plain(text, model)
        tokens = ["[[", " ##", " answer", " ##", " ]]", "\n", "7", ".", " X"]
        tops = [{"token": "7", "logprob": -0.2}, {"token": "12", "logprob": -1.5}, {"token": "3", "logprob": -3.0}]
        r["choices"][0]["logprobs"] = {"content": [
            {"token": t, "logprob": -0.1, "top_logprobs": tops if t == "7" else [{"token": t, "logprob": -0.1}]}
            for t in tokens]}
        return r

    monkeypatch.setattr(testing, "chat_response", with_logprobs)
    row = ml100k["test"][0]
    with testing.MockOpenAIServer(lambda i, body: ("ok", "[[ ## answer ## ]]\n7. X")) as server:
        lm = api_lm("openai/gpt-4o-mini", api_base=server.url, cache=False)
        with dspy.context(lm=lm):
            pred = AdaptRec(load_template("movies"), selection="none", mode="score")(
                history_titles=row["history_titles"], candidate_ids=row["candidate_item_ids"],
                candidate_titles=row["candidate_titles"])
        assert server.requests[0]["logprobs"] is True and server.requests[0]["top_logprobs"] == 20
    ids = row["candidate_item_ids"]
    assert pred.valid and pred.ranking[:3] == [ids[6], ids[11], ids[2]]
    assert sorted(pred.ranking) == sorted(ids)
