"""`adaptrec experiment` end to end with the tiny local Llama: rounds, resume, Stage-1 pools, report."""

import json

import pytest

from adaptrec_prompts.cli.app import main
from adaptrec_prompts.data.prepare import load_manifest
from adaptrec_prompts.evaluation.results import read_log
from adaptrec_prompts.experiments.experiment import plan
from conftest import goodreads_with_neighbors


@pytest.fixture(scope="module")
def gr_data(tmp_path_factory, goodreads_raw):
    return goodreads_with_neighbors(tmp_path_factory.mktemp("exp"), goodreads_raw, 6, ["test_extended"])


def test_plan_names_every_claim_once():
    names = [r.name for r in plan("d", ["none", "random", "static", "adaptive"], 5, [1, 3, 5, 7, 9],
                                  {"lm-pool100": "x"})]
    assert names == ["random", "popularity", "userknn", "zero-shot", "random-m5", "static-m5", "adaptive-m5",
                     "static-m1", "static-m3", "static-m7", "static-m9", "static-m5-lm-pool100"]


def test_experiment_runs_in_rounds_resumes_and_reports(gr_data, tiny_model, tmp_path, capsys):
    prepared, nb = gr_data
    out = tmp_path / "exp"
    argv = ["experiment", "--data", str(nb), "--lm", f"hf:{tiny_model}", "--out", str(out), "--split", "test_extended",
            "--limit", "5",
            "--chunk", "2", "--variants", "none,static,adaptive", "--m", "2", "--m-values", "1,2,3", "--n", "6",
            "--embedders", "collab,lm", "--prepared", str(prepared), "--pool-size", "60"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert [line.split(":")[0] for line in printed.splitlines() if line.startswith("round to")] == [
        "round to 2 examples", "round to 4 examples", "round to 5 examples"]
    names = ["random", "popularity", "userknn", "zero-shot", "static-m2", "adaptive-m2", "static-m1", "static-m3",
             "static-m2-collab-pool60", "static-m2-lm-pool60"]
    logs = {name: read_log(out / name / "predictions.jsonl") for name in names}
    assert all(len(log) == 5 for log in logs.values())
    assert len({frozenset(log) for log in logs.values()}) == 1  # every variant on the same examples
    for kind in ("collab", "lm"):
        section = load_manifest(out / "stage1" / f"{kind}-pool60")["neighbors"]
        assert section["pool"]["size"] == 60 and section["embedder_id"].startswith(kind)
    lm_cfg = json.loads((out / "static-m2-lm-pool60" / "manifest.json").read_text())["config"]
    assert lm_cfg["data"].endswith("lm-pool60") and lm_cfg["limit"] == 5
    report = (out / "report" / "table.md").read_text()
    assert all(f"| {name} |" in report for name in names) and "Paired against `zero-shot`" in report
    assert (out / "report" / "sweep.png").stat().st_size > 0 and (out / "report" / "bars.png").is_file()
    assert "| demonstrations help | zero-shot -> static-m2 | 5 |" in report
    claim_rows = [line for line in report.splitlines() if line.startswith("| demonstrations help")]
    assert claim_rows and all(line.rstrip(" |").endswith("/5") for line in claim_rows)  # same top-1 k/5
    assert "| the Stage-1 embedder matters (same pool) | static-m2-collab-pool60 -> static-m2-lm-pool60 | 5 |" in report
    assert "adaptive-m2 (Stage 2 by score; unparsed, embedding order used: 0/5; picked the embedding top M" in report
    assert "M sweep, HR@1: M=1: " in report and "M=3: " in report
    assert "- stage 1 lm-pool60: 60 pool vectors embedded and indexed, 9 test_extended queries" in report
    compare = (out / "report" / "compare.md").read_text()
    assert compare.count("\n| ") == len(names) - 1 + 1  # header + every run but zero-shot
    before = {name: (out / name / "predictions.jsonl").read_bytes() for name in names}
    assert main(argv) == 0  # resume: nothing left to run, nothing rewritten
    assert {name: (out / name / "predictions.jsonl").read_bytes() for name in names} == before
    # a smaller limit reports on those rows only, though the logs hold five
    assert main(argv[:argv.index("--limit")] + ["--limit", "3", "--chunk", "3"] + argv[argv.index("--chunk") + 2:]) == 0
    report = (out / "report" / "table.md").read_text()
    assert "| demonstrations help | zero-shot -> static-m2 | 3 |" in report and "| static-m2 | 3 |" in report


def test_experiment_needs_neighbours_and_prepared_for_embedders(gr_data, tiny_model, tmp_path, capsys):
    prepared, nb = gr_data
    assert main(["experiment", "--data", str(prepared), "--lm", f"hf:{tiny_model}", "--out", str(tmp_path / "a")]) == 2
    assert "no neighbour columns" in capsys.readouterr().err
    assert main(["experiment", "--data", str(nb), "--lm", f"hf:{tiny_model}", "--out", str(tmp_path / "b"),
                 "--embedders", "lm"]) == 2
    assert "--embedders needs --prepared" in capsys.readouterr().err


def test_same_top1_counts_shared_scored_examples_only():
    from adaptrec_prompts.evaluation.report import same_top1

    left = {"a": {"ranking": [1, 2]}, "b": {"ranking": [3, 1]}, "c": {"ranking": [5]}, "d": {"ranking": [7]}}
    right = {"a": {"ranking": [1, 9]}, "b": {"ranking": [1, 3]}, "c": {"ranking": [5], "error": "timeout"},
             "e": {"ranking": [7]}}
    assert same_top1(left, right) == "1/2"


def test_report_pairs_runs_of_the_same_name_from_two_experiments(gr_data, tmp_path, capsys):
    """`eval/report.py A B --reference A`: two runs called `random` (two experiments, other seeds) get names
    that tell them apart, and B is compared with A on the examples both ran."""
    from adaptrec_prompts.cli.report import main as report_main
    from adaptrec_prompts.data.prepare import load_prepared
    from adaptrec_prompts.evaluation.baselines import RandomBaseline
    from adaptrec_prompts.evaluation.harness import evaluate

    rows = load_prepared(gr_data[1])["test_extended"].to_list()[:12]
    a, b = tmp_path / "exp-a" / "runs" / "random", tmp_path / "exp-b" / "runs" / "random"
    evaluate(RandomBaseline(0), rows, a, progress=False)
    evaluate(RandomBaseline(3), rows[:9], b, progress=False)  # B ran 9 of A's 12 examples
    assert report_main([str(a), str(b), "--out", str(tmp_path / "rep"), "--reference", str(a)]) == 0
    text = (tmp_path / "rep" / "table.md").read_text()
    assert "| exp-a/runs/random |" in text and "| exp-b/runs/random |" in text
    assert "Paired against `exp-a/runs/random`" in text
    hits = {name: {r["example_id"]: r["hit1"] for r in read_log(f / "predictions.jsonl").values()}
            for name, f in (("a", a), ("b", b))}
    diff = sum(hits["b"][k] - hits["a"][k] for k in hits["b"]) / 9
    a_only = sum(hits["a"][k] > hits["b"][k] for k in hits["b"])
    b_only = sum(hits["b"][k] > hits["a"][k] for k in hits["b"])
    assert a_only + b_only > 0  # the seeds differ on these rows, so a wrong pairing would show
    assert f"| exp-b/runs/random | 9 | {diff:+.3f} [" in text and f"| {a_only}/{b_only} |" in text
    paired = json.loads((tmp_path / "rep" / "comparisons.json").read_text())  # the same numbers as data
    assert [(c["a"], c["b"], c["n"]) for c in paired] == [("exp-a/runs/random", "exp-b/runs/random", 9)]
    assert paired[0]["HR@1"]["diff"] == pytest.approx(diff) and paired[0]["HR@1"]["discordant"] == [a_only, b_only]
    assert report_main([str(a), "--out", str(tmp_path / "rep2"), "--reference", str(b)]) == 2
    assert "--reference" in capsys.readouterr().err
    assert report_main([str(a), str(a), "--out", str(tmp_path / "rep3")]) == 0  # the same run twice: listed once
    assert (tmp_path / "rep3" / "table.md").read_text().count("| random |") == 1
