"""labels="titles": candidates listed by title alone, answered with the title (LLaRA's answer format)."""

import dspy
import pytest

from adaptrec_prompts.data.render import load_template
from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.finetune.rows import stage3_row
from adaptrec_prompts.programs.adaptrec import AdaptRec, example_inputs
from adaptrec_prompts.programs.parsing import parse_choice


def test_titles_render_without_labels_and_the_instructions_say_so(ml100k):
    from conftest import with_fake_neighbors

    row = with_fake_neighbors(ml100k["test"][0], ml100k["train"].select(range(40, 60)))
    program = AdaptRec(load_template("movies"), selection="static", m_select=3, prompt="compact", labels="titles")
    prompt = stage3_row(program, row)["prompt"]
    listed = prompt[-1]["content"].split("[[ ## candidates ## ]]\n")[1].split("\n\n")[0]
    assert listed.splitlines() == row["candidate_titles"]  # one title per line, no number or letter
    instructions = prompt[0]["content"]
    assert "answer with its title exactly as written" in instructions and "number" not in instructions
    assert program.recommender.answer_text(3, "Heat (1995)") == "Heat (1995)"
    assert program.config()["labels"] == "titles"


def test_a_title_answer_parses_and_a_label_does_not():
    ids, titles = [10, 20, 30], ["Alien (1979)", "Aliens (1986)", "12 Monkeys (1995)"]
    assert parse_choice("Aliens (1986)", ids, titles, labels="titles").ranking == [20]
    assert parse_choice("12 Monkeys (1995)", ids, titles, labels="titles").ranking == [30]
    for answer in ("2", "B. Aliens (1986)", "2. Aliens (1986)"):  # the list shows no labels to answer with
        result = parse_choice(answer, ids, titles, labels="titles")
        assert not result.valid and "not a candidate title" in result.reason


def test_score_mode_ranks_the_titles_by_their_likelihood(ml100k, tiny_model):
    from conftest import with_fake_neighbors

    from adaptrec_prompts.backends.hf import hf_lm

    row = with_fake_neighbors(ml100k["test"][1], ml100k["train"].select(range(40, 60)))
    lm = hf_lm(tiny_model)
    program = AdaptRec(load_template("movies"), selection="static", m_select=3, mode="score", labels="titles")
    with dspy.context(lm=lm):
        pred = program(**example_inputs(row))
    x = example_inputs(row)
    rec = program.recommender
    inputs = rec.inputs(x["history_titles"], x["candidate_titles"], x["neighbors"][:3])
    messages = rec.adapter().format(signature=rec.recommend.signature, demos=[], inputs=inputs)
    expected = lm.engine.score(messages, [f"[[ ## answer ## ]]\n{t}\n" for t in x["candidate_titles"]])
    assert pred.scores == pytest.approx(expected, abs=1e-5)
    best = max(range(len(expected)), key=lambda i: (expected[i], -i))
    assert pred.ranking[0] == row["candidate_item_ids"][best]


def test_api_score_mode_refuses_title_answers():
    from adaptrec_prompts.programs.scoring import score_completions

    lm = dspy.LM("openai/gpt-4o-mini", api_key="unused", api_base="http://127.0.0.1:9/v1")
    with pytest.raises(ConfigError, match="labels='titles'.*labels='letters' or mode='generate'"):
        score_completions(lm, [{"role": "user", "content": "x"}], ["a", "b"], labels=None)
