"""Progress bars (`adaptrec_prompts.utils.progress`): one style (count, rate, time left) and one rule for when they
show: asked for, stderr a terminal, and not under CI. Tests run with a captured stderr, so the terminal is
faked where a bar is expected."""

import io
import sys

import numpy as np
import pytest

from adaptrec_prompts.data.schema import column
from adaptrec_prompts.evaluation.harness import evaluate
from adaptrec_prompts.retrieval.embedders import CollabEmbedder, embed_all, training_sequences
from adaptrec_prompts.utils import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def terminal(monkeypatch, capsys):
    """stderr taken for a terminal (the bars then write to pytest's captured stderr); CI unset. Returns a
    function that gives what was written to stderr since the last call."""
    monkeypatch.setattr(progress, "_stderr_is_terminal", lambda: True)
    monkeypatch.delenv("CI", raising=False)
    return lambda: capsys.readouterr().err


class _FirstCandidate:
    def predict_row(self, row):
        return {"raw": None, "answer": None, "ranking": list(row["candidate_item_ids"]), "valid": True, "reason": ""}

    def config(self):
        return {"name": "first-candidate"}


def test_the_rule(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(sys, "stderr", Terminal())  # in the test body: pytest resets sys.stderr between phases
    assert progress.enabled(True) and not progress.enabled(False)
    for value in ("true", "1", "yes"):
        monkeypatch.setenv("CI", value)
        assert not progress.enabled(True), f"CI={value} must silence the bars"
    for value in ("", "0", "false"):
        monkeypatch.setenv("CI", value)
        assert progress.enabled(True), f"CI={value!r} means not under CI"
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a pipe or a log file
    assert not progress.enabled(True)


def test_a_bar_shows_the_count_the_rate_and_the_time_left(terminal):
    with progress.bar(desc="embed test", total=4, unit="history", leave=True) as shown:  # leave: the last state
        for _ in range(4):
            shown.update(1)
    text = terminal()
    assert "embed test" in text and "4/4" in text
    assert "history/s" in text or "s/history" in text  # the rate
    assert "<" in text  # elapsed<remaining


def test_no_bar_without_a_terminal_under_ci_or_when_not_asked(terminal, monkeypatch):
    with progress.bar(desc="quiet", total=2, progress=False) as shown:
        shown.update(2)
    monkeypatch.setenv("CI", "true")
    with progress.bar(desc="quiet", total=2) as shown:
        shown.update(2)
    assert terminal() == ""


def test_an_evaluation_bar_is_named_after_its_run_and_quiet_with_progress_off(ml100k, tmp_path, terminal):
    rows = ml100k["test"].select(range(3)).to_list()
    evaluate(_FirstCandidate(), rows, tmp_path / "static-m5", {"a": 1}, progress=True)
    shown = terminal()
    assert "static-m5: " in shown and "/3 [" in shown and "example/s" in shown
    evaluate(_FirstCandidate(), rows, tmp_path / "quiet", {"a": 1}, progress=False)
    assert terminal() == ""


def test_embedding_in_chunks_behind_a_bar_gives_the_same_vectors(ml100k, terminal):
    embedder = CollabEmbedder().fit(training_sequences(ml100k["train"]))
    histories = column(ml100k["train"], "history_item_ids")[:2500]  # three chunks of 1,024
    shown = embed_all(embedder, histories, desc="embed pool", progress=True)
    assert np.array_equal(shown, embedder.embed(histories))
    text = terminal()
    assert "embed pool: " in text and "/2500 [" in text
    assert embed_all(embedder, [], progress=True).shape == embedder.embed([]).shape
