"""baseline:demo-match: the no-LM reading of the users the AdaptRec prompt shows (a hand-worked example)."""

import pytest

from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.evaluation.baselines.demo_match import DemoMatchBaseline, demo_exposure

# four retrieved users, best first; the program shows the first M (static)
ROW = {"example_id": "u9/5", "candidate_item_ids": [10, 20, 30, 40], "target_item_id": 30,
       "neighbor_history_item_ids": [[1, 20, 2], [20, 3, 4], [30, 5, 6], [40, 40, 40]],
       "neighbor_next_item_ids": [30, 10, 7, 40],
       "random_history_item_ids": [[40, 1, 2]], "random_next_item_ids": [20]}
SEQUENCES = [[20, 20], [10, 30]]  # training popularity: 20 twice, 10 and 30 once, 40 never


def test_shown_users_vote_next_above_history_and_popularity_breaks_ties():
    # M = 3: user 1 chose 30 next (+1) and shows 20 (+0.5); user 2 chose 10 (+1), shows 20 (+0.5); user 3 shows 30
    # (+0.5). Votes 30: 1.5, 10: 1.0, 20: 1.0, 40: 0 (user 4 is not shown); 20 is more popular than 10.
    baseline = DemoMatchBaseline(SEQUENCES, m_select=3)
    assert baseline.votes(ROW) == {30: 1.5, 10: 1.0, 20: 1.0, 3: 0.5, 4: 0.5, 7: 1.0, 1: 0.5, 2: 0.5, 5: 0.5, 6: 0.5}
    assert baseline.predict_row(ROW)["ranking"] == [30, 20, 10, 40]


def test_only_the_items_the_prompt_shows_vote():
    # demo_items = 2: the histories are shown as [20, 2], [3, 4] and [5, 6]: 30 keeps only user 1's next-item vote
    # (1.0), 10 its 1.0, 20 only user 1's history vote (0.5); 10 and 30 are equally popular: by id
    assert DemoMatchBaseline(SEQUENCES, m_select=3, demo_items=2).predict_row(ROW)["ranking"] == [10, 30, 20, 40]
    # M = 4 shows user 4 too, who chose 40 and shows it (once per user and role): 40 gets 1.5, ties 30 and is
    # ranked below it by popularity, above 20 and 10
    assert DemoMatchBaseline(SEQUENCES, m_select=4).predict_row(ROW)["ranking"] == [30, 40, 20, 10]
    assert DemoMatchBaseline(SEQUENCES, m_select=4).votes(ROW)[40] == 1.5


def test_random_selection_reads_the_random_users_columns():
    baseline = DemoMatchBaseline(SEQUENCES, selection="random", m_select=1)
    assert baseline.predict_row(ROW)["ranking"][0] == 20  # the one random user chose 20
    assert baseline.config()["selection"] == "random"


def test_where_the_target_is_shown():
    assert demo_exposure(ROW, m_select=3) == "next"
    assert demo_exposure({**ROW, "target_item_id": 20}, m_select=1) == "history"
    assert demo_exposure({**ROW, "target_item_id": 40}, m_select=3) is None
    assert demo_exposure({**ROW, "target_item_id": 40}, m_select=4) == "next"
    assert demo_exposure({**ROW, "target_item_id": 5}, m_select=3, demo_items=1) is None  # 5 is not a last item
    assert demo_exposure({**ROW, "target_item_id": 6}, m_select=3, demo_items=1) == "history"


def test_settings_that_show_no_user_or_need_an_lm_are_refused():
    for selection in ("none", "adaptive"):
        with pytest.raises(ConfigError, match="selection must be one of"):
            DemoMatchBaseline(SEQUENCES, selection=selection)
    with pytest.raises(ConfigError, match="next_weight > history_weight"):
        DemoMatchBaseline(SEQUENCES, next_weight=0.5, history_weight=0.5)
    with pytest.raises(ConfigError, match="index neighbors"):
        DemoMatchBaseline(SEQUENCES).predict_row({"example_id": "x", "candidate_item_ids": [1]})
    # a split that was not queried has empty neighbour lists: refused, never ranked by popularity alone
    unqueried = {**ROW, "neighbor_history_item_ids": [], "neighbor_next_item_ids": []}
    with pytest.raises(ConfigError, match="its split was not queried"):
        DemoMatchBaseline(SEQUENCES).predict_row(unqueried)
    with pytest.raises(ConfigError, match="its split was not queried"):
        demo_exposure(unqueried)


def test_the_harness_builds_it_with_the_programs_settings(tmp_path, goodreads_raw):
    from conftest import goodreads_with_neighbors

    from adaptrec_prompts.evaluation.runs import RunConfig, build_program, run_eval

    _, data = goodreads_with_neighbors(tmp_path, goodreads_raw, 6, ["train", "test"])
    program = build_program("baseline:demo-match:random-retrieved", data, n=6, m=3, demo_items=2, seed=4)
    assert program.config() == {"name": "demo-match", "selection": "random-retrieved", "n_retrieve": 6,
                                "m_select": 3, "demo_items": 2, "seed": 4, "next_weight": 1.0, "history_weight": 0.5}
    results = run_eval(RunConfig(data=data, out=tmp_path / "run", program="baseline:demo-match", n=6, m=3))
    assert results.n > 0 and results.errors == 0 and 0.0 <= results.metrics["HR@1"]["value"] <= 1.0
    with pytest.raises(ConfigError, match="n=7"):
        run_eval(RunConfig(data=data, out=tmp_path / "run7", program="baseline:demo-match", n=7, m=3))
    with pytest.raises(ConfigError, match="tuned on the rows it is scored on"):
        run_eval(RunConfig(data=data, out=tmp_path / "sasrec", program="baseline:sasrec:early-stop", split="valid"))

    # the report splits every run by whether the static prompt shows the target, and demo-match only ever
    # hits where it is shown (it has no other signal than popularity)
    import json

    from adaptrec_prompts.cli.report import main as report
    from adaptrec_prompts.data.prepare import load_prepared
    from adaptrec_prompts.evaluation.baselines.demo_match import demo_exposure

    run_eval(RunConfig(data=data, out=tmp_path / "pop", program="baseline:popularity"))
    assert report([str(tmp_path / "run"), str(tmp_path / "pop"), "--out", str(tmp_path / "rep"),
                   "--exposure", "3,0"]) == 0
    text = (tmp_path / "rep" / "table.md").read_text()
    assert "#### Does the model read the demonstrations?" in text
    saved = json.loads((tmp_path / "rep" / "exposure.json").read_text())
    rows = load_prepared(data)["test"].to_list()
    shown = [r for r in rows if demo_exposure(r, m_select=3, n_retrieve=10)]
    assert saved["rows"] == len(rows) and saved["shown"] == len(shown) and (saved["m"], saved["demo_items"]) == (3, None)
    by_run = {r["run"]: r for r in saved["runs"]}
    assert by_run["run"]["n_shown"] == len(shown) and by_run["pop"]["n_not_shown"] == len(rows) - len(shown)
    assert report([str(tmp_path / "run"), "--out", str(tmp_path / "rep2"), "--exposure", "0,5"]) == 2
