"""The harness end to end: results contract, resume after a kill, error accounting, baselines."""

import json
import os
import signal
import subprocess
import sys
import time

import dspy
import pytest
from dspy.utils.dummies import DummyLM

from adaptrec_prompts.cli.app import main
from adaptrec_prompts.data.render import load_template
from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.evaluation.baselines import PopularityBaseline, RandomBaseline
from adaptrec_prompts.evaluation.harness import evaluate
from adaptrec_prompts.evaluation.metrics import METRIC_KEYS
from adaptrec_prompts.evaluation.results import read_log
from adaptrec_prompts.programs.adaptrec import AdaptRec
from adaptrec_prompts.retrieval.embedders import training_sequences


def _rows(ml100k, n=12):
    return ml100k["test"].select(range(n)).to_list()


def test_results_contract_for_a_baseline(ml100k, ml100k_prepared, tmp_path, capsys):
    out = tmp_path / "pop"
    assert main(["eval", "--data", str(ml100k_prepared), "--program", "baseline:popularity", "--out", str(out),
                 "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["n"] == 95 and list(results["metrics"]) == list(METRIC_KEYS)
    for m in results["metrics"].values():
        assert set(m) == {"value", "ci_low", "ci_high"}
    assert {"lm_seconds", "total_seconds", "prompt_tokens"} <= set(results)
    assert results["metrics"]["ValidRatio"]["value"] == 1.0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data_hash"] and manifest["versions"]["dspy"] == dspy.__version__ and manifest["program_hash"]
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 95
    assert "HR@1=" in capsys.readouterr().out


def test_invalid_outputs_are_invalid_and_lm_errors_are_errors(ml100k, tmp_path):
    rows = _rows(ml100k, 4)

    lm = DummyLM([{"answer": "1"}, {"answer": "Aliens and more"}, {"nonsense": "x"}, {"answer": "2"}])
    program = AdaptRec(load_template("movies"), selection="none", mode="generate")
    results = evaluate(program, rows, tmp_path / "run", {"lm": "dummy"}, lm=lm, progress=False)
    log = read_log(tmp_path / "run" / "predictions.jsonl")
    assert [log[r["example_id"]]["valid"] for r in rows] == [True, False, False, True]
    assert results["errors"] == 0 and results["n"] == 4 and results["invalid"] == 2
    assert results["metrics"]["ValidRatio"]["value"] == 0.5


def test_transport_errors_are_counted_and_retried_on_resume(ml100k, tmp_path):
    rows = _rows(ml100k, 3)
    program = AdaptRec(load_template("movies"), selection="none", mode="generate")

    class Broken:
        def complete(self, request):
            raise ConnectionError("server went away")

        def stream(self, request):
            raise ConnectionError("server went away")

        def close(self):
            pass

    broken = dspy.LM("local/broken", engine=Broken(), cache=False, num_retries=0)
    results = evaluate(program, rows, tmp_path / "run", {"lm": "x"}, lm=broken, progress=False)
    assert results["errors"] == 3 and results["n"] == 0
    log = read_log(tmp_path / "run" / "predictions.jsonl")
    assert all("server went away" in r["error"] for r in log.values())
    fixed = evaluate(program, rows, tmp_path / "run", {"lm": "x"}, lm=DummyLM([{"answer": "1"}] * 3), progress=False)
    assert fixed["errors"] == 0 and fixed["n"] == 3


def test_resume_refuses_a_different_config(ml100k, tmp_path):
    rows = _rows(ml100k, 2)
    evaluate(RandomBaseline(0), rows, tmp_path / "run", {"a": 1}, progress=False)
    with pytest.raises(ConfigError, match="different config"):
        evaluate(RandomBaseline(1), rows, tmp_path / "run", {"a": 1}, progress=False)
    with pytest.raises(ConfigError, match="different config"):
        evaluate(RandomBaseline(0), rows, tmp_path / "run", {"a": 2}, progress=False)


class _Trained(RandomBaseline):
    """A baseline trained at run time: each training takes other seconds (and may end at another loss)."""

    def __init__(self, seed, seconds, loss=1.0):
        super().__init__(seed)
        self.record = {"train_seconds": seconds, "final_loss": loss}

    def training_record(self):
        return dict(self.record)


def test_a_retrained_baseline_resumes_but_another_one_is_refused(ml100k, tmp_path):
    rows = _rows(ml100k, 4)
    evaluate(_Trained(0, 10.0), rows[:2], tmp_path / "run", {"a": 1}, progress=False)
    out = evaluate(_Trained(0, 12.5), rows, tmp_path / "run", {"a": 1}, progress=False)  # seconds differ: same run
    assert out["n"] == 4
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["program"]["training"]["train_seconds"] == 10.0  # the model that scored the first rows
    with pytest.warns(UserWarning, match="final loss 2.0, not the 1.0"):
        evaluate(_Trained(0, 9.0, loss=2.0), rows, tmp_path / "run", {"a": 1}, progress=False)
    with pytest.raises(ConfigError, match="different config or program"):
        evaluate(_Trained(1, 10.0), rows, tmp_path / "run", {"a": 1}, progress=False)


class _Counting(PopularityBaseline):
    calls = 0

    def predict_row(self, row):
        type(self).calls += 1
        return super().predict_row(row)


def test_a_run_grows_with_its_limit_without_rerunning_examples(ml100k, tmp_path):
    train = training_sequences(ml100k["train"])
    first = evaluate(_Counting(train), _rows(ml100k, 4), tmp_path / "run", {"a": 1, "limit": 4, "examples": 4},
                     progress=False)
    grown = evaluate(_Counting(train), _rows(ml100k, 10), tmp_path / "run", {"a": 1, "limit": 10, "examples": 10},
                     progress=False)
    assert (first["n"], grown["n"], _Counting.calls) == (4, 10, 10)  # only the 6 new examples ran
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["config"]["limit"] == 10  # the manifest records the latest invocation
    shrunk = evaluate(_Counting(train), _rows(ml100k, 3), tmp_path / "run", {"a": 1, "limit": 3, "examples": 3},
                      progress=False)
    assert shrunk["n"] == 3 and _Counting.calls == 10  # results cover the requested rows only


def test_kill_midway_then_resume_loses_nothing(ml100k_prepared, tiny_model, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "adaptrec_prompts.cli", "eval", "--data", str(ml100k_prepared), "--program", "none",
           "--lm", f"hf:{tiny_model}", "--mode", "score", "--limit", "40", "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "predictions.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.is_file() or len(log.read_text().splitlines()) < 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(read_log(log))
    assert 5 <= before < 40, "the run should have been killed midway"
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip().endswith("}")]
    ids = [r["example_id"] for r in lines]
    assert len(set(ids)) == 40 and len(ids) <= 41  # each example done once (a torn line at the kill at most)
    results = json.loads((out / "results.json").read_text())
    assert results["n"] == 40 and results["metrics"]["ValidRatio"]["value"] == 1.0
    straight = tmp_path / "straight"
    subprocess.run([*cmd[:-2], str(straight), "--no-progress"], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    again = json.loads((straight / "results.json").read_text())
    assert again["metrics"] == results["metrics"]  # resuming gives the same numbers as one uninterrupted run


def test_eval_needs_an_lm_for_llm_programs(ml100k_prepared, tmp_path, capsys):
    assert main(["eval", "--data", str(ml100k_prepared), "--program", "none", "--out", str(tmp_path / "x"),
                 "--no-progress"]) == 2
    assert "--lm hf:PATH" in capsys.readouterr().err


def test_unknown_program(ml100k_prepared, tmp_path, capsys):
    assert main(["eval", "--data", str(ml100k_prepared), "--program", "baseline:magic", "--out", str(tmp_path / "x"),
                 "--no-progress"]) == 2
    assert "unknown program" in capsys.readouterr().err
