"""examples/quickstart.py runs end to end (prepare -> index -> live recommendation -> evaluation) using
only the public API, on the real ML-100K files and a tiny local model."""

import json
import os
import subprocess
import sys

from conftest import REPO


def test_quickstart_runs_and_writes_a_scored_run(ml100k_raw, tmp_path):
    out = tmp_path / "qs"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "quickstart.py"), "--raw-dir", str(ml100k_raw),
                           "--out", str(out), "--limit", "2", "--pool-size", "1000"], capture_output=True, text=True,
                          timeout=600, env=env, cwd=tmp_path)
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
