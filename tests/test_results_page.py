"""scripts/results_page.py: the README's outcome paragraph is what the reports say, and the generator copes with
a report that lacks a run instead of crashing or inventing it."""

import importlib.util
import json
import re
import shutil

import pytest

from conftest import REPO


@pytest.fixture()
def page():
    spec = importlib.util.spec_from_file_location("results_page", REPO / "scripts" / "results_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_outcome_is_the_generated_one(page):
    begin, end = page.README_MARKERS
    text = (REPO / "README.md").read_text()
    assert begin in text and end in text, "README lost its outcome markers"
    assert text.split(begin, 1)[1].split(end, 1)[0].strip() == page.readme_outcome().strip(), (
        "README's outcome paragraph differs from the reports: run python scripts/results_page.py")


def test_markers_out_of_order_leave_the_readme_alone(page, tmp_path, monkeypatch):
    begin, end = page.README_MARKERS
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{end}\nb\n{begin}\nc\n")
    monkeypatch.setattr(page, "ROOT", tmp_path)
    page.write_readme_outcome()
    assert readme.read_text() == f"a\n{end}\nb\n{begin}\nc\n"
    readme.write_text(f"a\n{begin}\nold\n{end}\nc\n")
    page.write_readme_outcome()
    assert readme.read_text() == f"a\n{begin}\n\n{page.readme_outcome()}\n\n{end}\nc\n" and "old" not in readme.read_text()


def test_a_report_without_the_zero_shot_run_says_so(page, tmp_path, monkeypatch):
    dataset, objectives, test, chosen = page.LISTWISE[0]
    for folder in (objectives, test):
        shutil.copytree(REPO / "docs" / "results" / folder, tmp_path / "results" / folder)
    comparisons = tmp_path / "results" / test / "comparisons.json"
    comparisons.write_text(json.dumps([c for c in json.loads(comparisons.read_text()) if c["b"] != "tuned-zero-shot"]))
    runs = tmp_path / "results" / test / "runs.json"
    runs.write_text(json.dumps([r for r in json.loads(runs.read_text()) if r["name"] != "tuned-zero-shot"]))
    monkeypatch.setattr(page, "DOCS", tmp_path)
    outcome = page.listwise_outcome(dataset, objectives, test, chosen)
    assert outcome["targets"]["zero-shot"].startswith("not measured") and outcome["zero_shot"] is None
    assert not re.search(r"(?<!un)tuned-zero-shot", outcome["test"]) and "demo-match" in outcome["test"]
