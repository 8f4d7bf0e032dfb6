import json

import dspy
import pytest
from dspy.utils.dummies import DummyLM

from adaptrec_prompts.data.render import load_template
from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.programs.adaptrec import AdaptRec, example_inputs
from adaptrec_prompts.programs.recommender import NextItemRecommender
from adaptrec_prompts.programs.saving import load_program, save_program
from adaptrec_prompts.programs.selector import UserSelector
from conftest import with_fake_neighbors

MOVIES = load_template("movies")


@pytest.fixture(autouse=True)
def clean_settings():
    with dspy.context(lm=None, adapter=None):
        yield


@pytest.fixture(scope="module")
def rows(ml100k):
    train = ml100k["train"]
    return [with_fake_neighbors(r, train.select(range(100 + 10 * i, 120 + 10 * i))) for i, r in
            enumerate(ml100k["test"].select(range(4)))]


def test_recommender_generate_with_dummy_lm(rows):
    row = rows[0]
    target_number = row["candidate_item_ids"].index(row["target_item_id"]) + 1
    lm = DummyLM([{"answer": f"{target_number}. {row['target_title']}"}, {"answer": "Alien"}])
    rec = NextItemRecommender(MOVIES)
    with dspy.context(lm=lm):
        hit = rec(history_titles=row["history_titles"], candidate_ids=row["candidate_item_ids"],
                  candidate_titles=row["candidate_titles"], similar_users=[(["A"], "B")])
        miss = rec(history_titles=row["history_titles"], candidate_ids=row["candidate_item_ids"],
                   candidate_titles=row["candidate_titles"], similar_users=[(["A"], "B")])
    assert hit.valid and hit.ranking == [row["target_item_id"]]
    assert not miss.valid and miss.ranking == [] and "neither" in miss.reason
    prompt = lm.history[0]["messages"][-1]["content"]
    assert f"The user watched these {len(row['history_titles'])} movies" in prompt
    assert f"20. {row['candidate_titles'][19]}" in prompt and "User 1 watched 1 movies (A) and then chose B." in prompt


def test_unparseable_lm_output_is_invalid_not_retried(rows):
    row = rows[0]

    lm = DummyLM({"": {"nonsense_field": "x"}})
    with dspy.context(lm=lm):
        pred = NextItemRecommender(MOVIES)(history_titles=row["history_titles"],
                                           candidate_ids=row["candidate_item_ids"],
                                           candidate_titles=row["candidate_titles"], similar_users=[])
    assert not pred.valid and "adapter could not parse" in pred.reason
    assert len(lm.history) == 1  # no silent JSON-adapter retry


def test_zero_shot_prompt_has_no_similar_users(rows):
    lm = DummyLM([{"answer": "1"}])
    program = AdaptRec(MOVIES, selection="none")
    with dspy.context(lm=lm):
        pred = program(**example_inputs(rows[0]))
    assert pred.valid and pred.selection["indices"] == []
    assert "similar_users" not in lm.history[0]["messages"][-1]["content"]
    assert "Users with similar histories" not in lm.history[0]["messages"][0]["content"]


@pytest.mark.parametrize(("selection", "expected"), [("static", [0, 1, 2]), ("random-retrieved", None)])
def test_static_and_random_selection(rows, selection, expected):
    program = AdaptRec(MOVIES, selection=selection, n_retrieve=10, m_select=3)
    with dspy.context(lm=DummyLM([{"answer": "1"}] * 4)):
        a = program(**example_inputs(rows[0]))
        b = program(**example_inputs(rows[0]))
        c = program(**example_inputs(rows[1]))
    assert len(a.selection["indices"]) == 3 and a.selection["indices"] == b.selection["indices"]
    if expected:
        assert a.selection["indices"] == expected
    else:
        assert all(0 <= i < 10 for i in a.selection["indices"]) and len(set(c.selection["indices"])) == 3


def test_random_users_control_shows_the_rows_random_pool_users_not_the_retrieved(rows):
    program = AdaptRec(MOVIES, selection="random", n_retrieve=10, m_select=3)
    lm = DummyLM([{"answer": "1"}])
    with dspy.context(lm=lm):
        pred = program(**example_inputs(rows[0]))
    assert pred.selection["indices"] == [0, 1, 2]
    prompt = lm.history[0]["messages"][-1]["content"]
    for title in rows[0]["random_next_titles"][:3]:
        assert f"and then chose {title}." in prompt
    assert f"and then chose {rows[0]['neighbor_next_titles'][0]}." not in prompt
    assert program.config()["random_from"] == "pool"  # a run of the old "random" cannot resume as this one
    bare = {k: v for k, v in rows[0].items() if not k.startswith("random_")}
    with pytest.raises(ConfigError, match="random pool users"), dspy.context(lm=lm):
        program(**example_inputs(bare))


def test_random_selection_depends_on_example_and_seed(rows):
    picks = set()
    for seed in range(6):
        program = AdaptRec(MOVIES, selection="random-retrieved", n_retrieve=10, m_select=3, seed=seed)
        with dspy.context(lm=DummyLM([{"answer": "1"}])):
            picks.add(tuple(program(**example_inputs(rows[0])).selection["indices"]))
    assert len(picks) > 1


def test_adaptive_selection_uses_the_lm_and_falls_back(rows):
    program = AdaptRec(MOVIES, selection="adaptive", n_retrieve=10, m_select=3)
    lm = DummyLM([{"selected_users": "[7, 2, 9]"}, {"answer": "1"},
                  {"selected_users": "[42]"}, {"answer": "1"},
                  {"selected_users": "[5]"}, {"answer": "1"}])
    with dspy.context(lm=lm):
        good = program(**example_inputs(rows[0]))
        bad = program(**example_inputs(rows[0]))
        short = program(**example_inputs(rows[0]))
    assert good.selection == {"indices": [6, 1, 8], "fallback": False, "padded": False, "reason": "",
                              "method": "generate"}
    assert bad.selection["fallback"] and bad.selection["indices"] == [0, 1, 2] and "outside 1..10" in bad.selection[
        "reason"]
    assert short.selection["padded"] and short.selection["indices"] == [4, 0, 1]
    stage3 = lm.history[1]["messages"][-1]["content"]
    pool = rows[0]["neighbor_next_titles"]
    assert f"and then chose {pool[6]}." in stage3.split("\n")[1]  # selected user 7 is shown first


def test_score_mode_needs_a_scoring_backend(rows):
    program = AdaptRec(MOVIES, selection="static", mode="score")
    with dspy.context(lm=DummyLM([{"answer": "1"}])), pytest.raises(ConfigError, match="no token logprobs|cannot score"):
        program(**example_inputs(rows[0]))


def test_missing_neighbours_is_a_clear_error(ml100k):
    row = ml100k["test"][0]
    with dspy.context(lm=DummyLM([{"answer": "1"}])), pytest.raises(ConfigError, match="adaptrec index neighbors"):
        AdaptRec(MOVIES, selection="static")(**example_inputs(row))


def test_bad_config():
    with pytest.raises(ConfigError, match="selection must be one of"):
        AdaptRec(MOVIES, selection="llm")
    with pytest.raises(ConfigError, match=r"m_select \(--m\) must be between 1 and n_retrieve"):
        AdaptRec(MOVIES, n_retrieve=3, m_select=5)
    with pytest.raises(ConfigError, match="mode must be one of"):
        NextItemRecommender(MOVIES, mode="rank")
    with pytest.raises(ConfigError, match="not found; use one of"):
        load_template("cartoons")


def test_save_load_round_trip(tmp_path, rows):
    program = AdaptRec(MOVIES, selection="adaptive", n_retrieve=8, m_select=4, mode="generate", seed=3)
    program.recommender.recommend.signature = program.recommender.recommend.signature.with_instructions("Be brief.")
    program.recommender.recommend.lm = dspy.LM("openai/gpt-4o-mini", api_base="http://127.0.0.1:1/v1")
    path = save_program(program, tmp_path / "programs" / "p.json")
    text = path.read_text()
    assert "127.0.0.1" not in text and "api_key" not in text  # no endpoint, no key
    loaded = load_program(path)
    assert loaded.config() == program.config()
    assert loaded.recommender.recommend.signature.instructions == "Be brief."
    assert json.loads(save_program(loaded, tmp_path / "again.json").read_text()) == json.loads(text)
    assert load_program(path, mode="score").mode == "score"


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{}")
    with pytest.raises(ConfigError, match="not a saved AdaptRec program"):
        load_program(path)


def test_user_selector_alone(rows):
    selector = UserSelector(MOVIES, m_select=2)
    with dspy.context(lm=DummyLM([{"selected_users": "[3, 1]"}])):
        pred = selector(history_titles=["A"], pool_histories=[["x"], ["y"], ["z"]])
    assert pred.indices == [2, 0] and pred.method == "generate"  # auto: DummyLM cannot score
    with dspy.context(lm=DummyLM([{"selected_users": "[3, 1]"}])), pytest.raises(ConfigError, match="API models"):
        UserSelector(MOVIES, m_select=2, mode="score")(history_titles=["A"], pool_histories=[["x"], ["y"]])
    with pytest.raises(ConfigError, match="Stage-2 mode must be one of"):
        UserSelector(MOVIES, mode="vote")


def test_only_adaptive_programs_record_their_stage2_mode():
    assert "stage2" not in AdaptRec(MOVIES, selection="static", mode="score").config()
    assert AdaptRec(MOVIES, selection="adaptive", mode="score").config()["stage2"] == "auto"
    assert AdaptRec(MOVIES, selection="adaptive", mode="score").selector.mode == "auto"
    assert AdaptRec(MOVIES, selection="adaptive", mode="generate").selector.mode == "generate"  # auto -> generate
    assert AdaptRec(MOVIES, selection="adaptive", mode="generate", stage2="score").selector.mode == "score"


def test_compact_prompt_is_shorter_and_still_parses(rows):
    full = AdaptRec(MOVIES, selection="static", n_retrieve=10, m_select=3)
    compact = AdaptRec(MOVIES, selection="static", n_retrieve=10, m_select=3, prompt="compact", demo_items=5)
    sent = {}
    for name, program in (("full", full), ("compact", compact)):
        lm = DummyLM([{"answer": "3"}])
        with dspy.context(lm=lm):
            pred = program(**example_inputs(rows[0]))
        assert pred.valid and pred.ranking == [rows[0]["candidate_item_ids"][2]]
        sent[name] = "".join(m["content"] for m in lm.history[0]["messages"])
    assert len(sent["compact"]) < 0.8 * len(sent["full"])
    assert compact.config()["prompt"] == "compact" and "prompt" not in full.config()  # old hashes unchanged
    with pytest.raises(ConfigError, match="prompt must be one of"):
        AdaptRec(MOVIES, prompt="tiny")
