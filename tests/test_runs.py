"""`run_eval(RunConfig)`, the library call behind `adaptrec eval`."""

import json

import pytest

from adaptrec_prompts.cli import main, make_parser
from adaptrec_prompts.errors import ConfigError, IncompleteRunError
from adaptrec_prompts.evaluation import read_log
from adaptrec_prompts.runs import Results, RunConfig, config_fields, run_eval


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def _rankings(folder):
    return {k: (r["ranking"], r["hit1"]) for k, r in read_log(folder / "predictions.jsonl").items()}


def _subparser(name):
    groups = next(a for a in make_parser()._actions if a.dest == "group")
    return groups.choices[name]


def test_the_eval_options_are_the_run_config_fields():
    dests = {a.dest for a in _subparser("eval")._actions} - {"help", "no_progress"}
    assert dests == set(config_fields())


def test_run_eval_is_adaptrec_eval(ml100k_prepared, tmp_path, capsys):
    results = run_eval(RunConfig(data=ml100k_prepared, out=tmp_path / "lib", program="baseline:popularity", limit=20),
                       progress=False)
    assert main(["eval", "--data", str(ml100k_prepared), "--program", "baseline:popularity", "--limit", "20",
                 "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'cli'}: n=20 errors=0 HR@1=")
    lib, cli = _manifest(tmp_path / "lib"), _manifest(tmp_path / "cli")
    assert lib["config"] == cli["config"] and lib["run_config"] == cli["run_config"]
    assert lib["run_config"]["program"] == "baseline:popularity" and "out" not in lib["run_config"]
    assert _rankings(tmp_path / "lib") == _rankings(tmp_path / "cli")
    # Results: the metrics, the rows, and still the results.json dict
    assert (results.n, results.errors, results.path) == (20, 0, tmp_path / "lib")
    assert results.metrics == json.loads((tmp_path / "lib" / "results.json").read_text())["metrics"]
    assert results["n"] == 20 and results.raw["metrics"] is results.metrics and dict(results) == results.raw
    frame = results.to_pandas()
    assert len(frame) == 20 and {"example_id", "ranking", "hit1", "error"} <= set(frame.columns)
    assert frame["hit1"].mean() == pytest.approx(results.metrics["HR@1"]["value"])
    assert len(Results.load(tmp_path / "lib").to_pandas()) == 20


def test_a_run_config_says_which_field_is_wrong():
    with pytest.raises(ConfigError, match=r"RunConfig.split='nope' is not valid; use one of train, valid, test"):
        RunConfig(data="d", out="o", split="nope")
    with pytest.raises(ConfigError, match=r"RunConfig.mode='fast' is not valid; use one of generate, score"):
        RunConfig(data="d", out="o", mode="fast")
    with pytest.raises(ConfigError, match=r"RunConfig.limit must be >= 1, got 0"):
        RunConfig(data="d", out="o", limit=0)


def test_run_eval_needs_an_lm_name_for_llm_programs(ml100k_prepared, tmp_path):
    with pytest.raises(ConfigError, match="this program needs an LM: pass --lm"):
        run_eval(RunConfig(data=ml100k_prepared, out=tmp_path / "x", program="none"), lm=object(), progress=False)
    assert not (tmp_path / "x").exists()


def test_an_incomplete_run_raises_with_what_was_scored(ml100k_prepared, tmp_path, monkeypatch):
    from adaptrec_prompts.testing import MockOpenAIServer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    with MockOpenAIServer(lambda number, body: ("500", None)) as server:
        config = RunConfig(data=ml100k_prepared, out=tmp_path / "run", program="none", lm="openai/mock",
                           api_base=server.url, mode="generate", limit=2, retries=0, num_retries=0)
        with pytest.raises(IncompleteRunError, match="2 of 2 examples failed") as caught:
            run_eval(config, progress=False)
    assert caught.value.results.errors == 2 and caught.value.results.n == 0
    assert caught.value.results.to_pandas()["error"].notna().all()
