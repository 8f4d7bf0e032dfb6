"""examples/quickstart.py runs end to end (prepare -> index -> live recommendation -> evaluation) using
only the public API, on the real ML-100K files and a tiny local model; examples/notebook.py then runs the
whole Python path (prepare, index, neighbours, live program, recommendation with the selected users,
run_eval to a Results, save, load, same answer) in the same folder, reusing the prepared data, the index
and the model the quickstart made."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


def _env(**extra):
    return {**os.environ, **extra,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="module")
def quickstart(ml100k_raw, tmp_path_factory):
    """The quickstart run once: (its process, its output folder)."""
    cwd = tmp_path_factory.mktemp("quickstart")
    out = cwd / "qs"
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "quickstart.py"), "--raw-dir", str(ml100k_raw),
                           "--out", str(out), "--limit", "2", "--pool-size", "1000"], capture_output=True, text=True,
                          timeout=600, env=_env(), cwd=cwd)
    return proc, out


def test_quickstart_runs_and_writes_a_scored_run(quickstart):
    proc, out = quickstart
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    step = {line[:2]: line for line in lines if line[:2] in ("1.", "2.", "3.", "4.")}
    assert "test=95" in step["1."] and "1000 training examples" in step["2."]
    assert "10 similar users retrieved" in step["3."] and "evaluated on 2 test users" in step["4."]
    ranked = [line.split(". ", 1)[1] for line in lines if line.startswith("   ")]
    assert sorted(ranked) == sorted(["The Empire Strikes Back (1980)", "Scream (1996)", "Liar Liar (1997)",
                                     "Titanic (1997)", "Contact (1997)"])
    results = json.loads((out / "runs" / "live-static" / "results.json").read_text())
    assert results["n"] == 2 and results["errors"] == 0 and results["metrics"]["ValidRatio"]["value"] == 1.0
    records = [json.loads(x) for x in (out / "runs" / "live-static" / "predictions.jsonl").read_text().splitlines()]
    assert all(len(r["neighbor_example_ids"]) == 10 for r in records)


def test_the_notebook_example_runs_the_whole_python_path(quickstart, ml100k_raw):
    _proc, out = quickstart
    assert (out / "ml-100k" / "manifest.json").is_file() and (out / "tiny" / "config.json").is_file()
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "notebook.py")], capture_output=True, text=True,
                          timeout=600, cwd=out.parent,
                          env=_env(ADAPTREC_DATA=str(ml100k_raw.parent), NOTEBOOK_OUT=str(out), NOTEBOOK_LIMIT="20",
                                   NOTEBOOK_POOL="1000"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    step = {}  # the first line of each step (inspect_history's prompt has numbered candidate lines too)
    for line in lines:
        if line[:2] in ("1.", "2.", "3.", "4.", "5.", "6.", "7."):
            step.setdefault(line[:2], line)
    assert "'test': 95" in step["1."] and "count=1000" in step["2."]
    shown = [line for line in lines if line.startswith("   shown: user ")]
    assert len(shown) == 3 and all("then '" in line for line in shown)  # the selected users, with their ids
    assert "score mode: log-likelihood of each of 5 completions" in proc.stdout  # inspect_history of a score call
    assert step["6."].startswith("6. 20 test users: HR@1 ")
    hr_persisted, hr_live = (float(part.split()[0]) for part in step["6."].split("HR@1 ")[1].split(", "))
    assert hr_persisted == hr_live  # the same neighbours, persisted or live: the same rankings
    assert step["7."].endswith("same answer: True")
    manifest = json.loads((out / "runs" / "static-live" / "manifest.json").read_text())
    assert manifest["config"]["program"] == "LiveAdaptRec object" and manifest["program"]["retriever"]["n"] == 10
    log = out / "runs" / "static-persisted" / "predictions.jsonl"
    records = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(records) == 20 and all(r["top_title"] for r in records)
