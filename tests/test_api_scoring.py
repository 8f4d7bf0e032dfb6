"""API score mode for any tokenizer: candidate labels (numbers or letters) read from a server's top logprobs.

The server is the local OpenAI-compatible test server; its token logprobs come from a real Hugging Face
pre-tokenizer, with digits split one per token (Llama, Mistral, Gemma) or kept whole (OpenAI's).
"""

import dspy
import pytest

from adaptrec_prompts.backends import api_lm
from adaptrec_prompts.data.render import candidate_label, load_template
from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.programs.adaptrec import AdaptRec, example_inputs
from adaptrec_prompts.programs.parsing import parse_choice
from adaptrec_prompts.programs.scoring import _openai_tokenizer
from adaptrec_prompts.utils import testing

MOVIES = load_template("movies")
K = 20
# the model's belief over candidates (1-based list positions), most likely first: 12 then 3, 17, ...
BELIEF = [12, 3, 17, 1, 20, 5, 9, 14, 2, 19, 7, 11, 6, 16, 10, 4, 18, 8, 15, 13]


def _server_script(labels: str, split_digits: bool):
    """A server answering with the top candidate and top-20 logprobs at the answer's first token, as a model
    with BELIEF would give them under this tokenizer."""
    def script(i, body):
        label = [candidate_label(p, labels) for p in BELIEF]
        if labels == "numbers" and split_digits:  # only the first digit is a token: "12" -> "1", "2"
            alternatives: dict[str, float] = {}
            for rank, text in enumerate(label):
                alternatives.setdefault(text[0], -0.5 - rank)
            alternatives.update({w: -30.0 - j for j, w in enumerate(("The", "I", "Based", "**", "Candidate"))})
        else:
            alternatives = {text: -0.5 - rank for rank, text in enumerate(label)}
        title = "Some Title"
        text = f"[[ ## answer ## ]]\n{label[0]}. {title}\n\n[[ ## completed ## ]]"
        return "logprobs", (text, testing.logprobs_content(text, alternatives, split_digits))
    return script


def _rank(row, labels: str, split_digits: bool, model="openai/local-model"):
    with testing.MockOpenAIServer(_server_script(labels, split_digits)) as server:
        lm = api_lm(model, api_base=server.url, cache=False)
        with dspy.context(lm=lm):
            pred = AdaptRec(MOVIES, selection="none", mode="score", labels=labels)(**example_inputs(row))
        return pred, server.requests


def test_letters_score_every_candidate_with_a_digit_splitting_tokenizer(ml100k, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    row = ml100k["test"][0]
    pred, requests = _rank(row, "letters", split_digits=True)
    assert all(s > float("-inf") for s in pred.scores) and len(pred.scores) == K
    ids = row["candidate_item_ids"]
    assert pred.ranking == [ids[p - 1] for p in BELIEF]
    user = requests[0]["messages"][-1]["content"]
    assert "\nL. " + row["candidate_titles"][11] in user and "\n12. " not in user  # the list is lettered
    assert "lettered candidate" in requests[0]["messages"][0]["content"]


def test_numbers_with_a_digit_splitting_tokenizer_are_refused_not_misread(ml100k, monkeypatch):
    """Before: '1' (which also starts 10-19) scored candidate 1 and 10-20 scored -inf, silently."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    with pytest.raises(ConfigError, match=r"writes numbers as single digits.*labels='letters'"):
        _rank(ml100k["test"][0], "numbers", split_digits=True, model="openai/gpt-4o-mini")


def test_numbers_with_whole_number_tokens_score_all_candidates(ml100k, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    row = ml100k["test"][0]
    pred, _ = _rank(row, "numbers", split_digits=False)
    assert all(s > float("-inf") for s in pred.scores)
    assert pred.ranking == [row["candidate_item_ids"][p - 1] for p in BELIEF]


def test_label_variants_of_one_token_add_up():
    """'A' and ' A' name the same candidate: their probabilities are summed, not the larger one kept."""
    import math

    from adaptrec_prompts.programs.scoring import api_label_scores

    text = "[[ ## answer ## ]]\nA. X\n\n[[ ## completed ## ]]"
    content = testing.logprobs_content(text, {"A": math.log(0.3), " A": math.log(0.2), "B": math.log(0.4)}, True)

    def lm(messages, **kwargs):
        return [{"text": text, "logprobs": {"content": content}}]

    scores = api_label_scores(lm, [], ["A", "B", "C"])
    assert scores[0] == pytest.approx(math.log(0.5)) and scores[1] == pytest.approx(math.log(0.4))
    assert scores[2] == pytest.approx(math.log(0.1))  # absent: half the least likely listed token


def test_openai_tokenizer_is_assumed_only_for_openai_itself(monkeypatch):
    for var in ("OPENAI_BASE_URL", "OPENAI_API_BASE"):
        monkeypatch.delenv(var, raising=False)
    assert _openai_tokenizer(dspy.LM("openai/gpt-4o-mini"))
    assert not _openai_tokenizer(dspy.LM("openai/gpt-4o-mini", api_base="http://127.0.0.1:8000/v1"))
    assert not _openai_tokenizer(dspy.LM("openai/llama-3-8b"))
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
    assert not _openai_tokenizer(dspy.LM("openai/gpt-4o-mini"))


def test_letters_in_generate_mode_and_parsing(ml100k):
    row = ml100k["test"][0]
    titles = row["candidate_titles"]
    assert parse_choice(f"C. {titles[2]}", row["candidate_item_ids"], titles, "letters").ranking == \
        [row["candidate_item_ids"][2]]
    assert not parse_choice(f"C. {titles[3]}", row["candidate_item_ids"], titles, "letters").valid
    assert "outside A..T" in parse_choice("Z", row["candidate_item_ids"], titles, "letters").reason
    program = AdaptRec(MOVIES, selection="none", mode="generate", labels="letters")
    with dspy.context(lm=dspy.utils.DummyLM([{"answer": f"D. {titles[3]}"}])):
        pred = program(**example_inputs(row))
    assert pred.valid and pred.ranking == [row["candidate_item_ids"][3]]
    assert program.config()["labels"] == "letters"
    assert "labels" not in AdaptRec(MOVIES, selection="none").config()  # numbered programs keep their identity
    with pytest.raises(ConfigError, match="labels must be one of"):
        AdaptRec(MOVIES, labels="roman")
    with pytest.raises(ConfigError, match="26 candidates"):
        candidate_label(27, "letters")


def test_sft_rows_and_local_scoring_use_the_same_letters(ml100k, tiny_model):
    """Training rows answer with the target's letter; the local engine scores lettered answers."""
    from adaptrec_prompts.backends.hf import hf_lm
    from adaptrec_prompts.finetune.rows import stage3_row

    row = ml100k["test"][1]
    program = AdaptRec(MOVIES, selection="none", mode="score", labels="letters", prompt="compact")
    sft = stage3_row(program, row)
    position = row["candidate_item_ids"].index(row["target_item_id"])
    assert sft["completion"][-1]["content"].startswith(f"[[ ## answer ## ]]\n{chr(65 + position)}. ")
    with dspy.context(lm=hf_lm(str(tiny_model))):
        pred = program(**example_inputs(row))
    assert pred.valid and len(pred.scores) == K and all(s > float("-inf") for s in pred.scores)


def test_plain_chat_template_renders_what_the_local_engine_sends(ml100k, tiny_model):
    """templates/plain-chat.jinja (for `vllm serve --chat-template`) gives a server the in-process plain prompt."""
    from pathlib import Path

    from adaptrec_prompts.backends.hf import HFEngine

    engine = HFEngine.load(str(tiny_model), prompt_format="plain")
    program = AdaptRec(MOVIES, selection="none", mode="score", prompt="compact")
    rec, row = program.recommender, ml100k["test"][0]
    messages = rec.adapter().format(rec.recommend.signature, [], rec.inputs(row["history_titles"],
                                                                            row["candidate_titles"]))
    jinja = (Path(__file__).resolve().parents[1] / "templates" / "plain-chat.jinja").read_text()
    served = engine.tokenizer.apply_chat_template(messages, chat_template=jinja, tokenize=False)
    assert served == engine.tokenizer.bos_token + engine.render(messages)
    assert engine.tokenizer(served, add_special_tokens=False)["input_ids"] == engine.prompt_ids(messages)


def test_whole_number_evidence_is_remembered_so_a_confident_answer_is_not_refused(ml100k, monkeypatch):
    """A server that once showed a multi-digit token keeps numbered scoring when a later top 20 holds single
    digits only (a confident model); without that evidence the same response is refused."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    confident = {str(i): -0.1 - i for i in range(1, 10)}  # single digits only, whole-number tokenizer

    def script(i, body):
        alternatives = {"12": -0.2, "3": -1.0, "17": -2.0} if i == 0 else confident
        label = next(iter(alternatives))
        text = f"[[ ## answer ## ]]\n{label}. X\n\n[[ ## completed ## ]]"
        return "logprobs", (text, testing.logprobs_content(text, alternatives, split_digits=False))

    rows = ml100k["test"].select(range(2))
    with testing.MockOpenAIServer(script) as server:
        program = AdaptRec(MOVIES, selection="none", mode="score")
        with dspy.context(lm=api_lm("openai/local-model", api_base=server.url, cache=False)):
            preds = [program(**example_inputs(r)) for r in rows]
    assert all(p.valid for p in preds) and preds[1].ranking[0] == rows[1]["candidate_item_ids"][0]
    with testing.MockOpenAIServer(lambda i, body: script(1, body)) as server:  # a new server: no evidence
        with dspy.context(lm=api_lm("openai/local-model", api_base=server.url, cache=False)), \
                pytest.raises(ConfigError, match="showed no multi-digit number token"):
            program(**example_inputs(rows[0]))


def test_calibrated_letters_over_the_api_rank_without_nan(ml100k, monkeypatch):
    """Labels absent from a top 20 get that list's lowest logprob, so calibrated differences stay finite."""
    import math

    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    row = ml100k["test"][0]

    def script(i, body):
        alternatives = {candidate_label(p, "letters"): -0.5 - r for r, p in enumerate(BELIEF[:10])}
        text = f"[[ ## answer ## ]]\n{next(iter(alternatives))}. X\n\n[[ ## completed ## ]]"
        return "logprobs", (text, testing.logprobs_content(text, alternatives, split_digits=True))

    with testing.MockOpenAIServer(script) as server:
        with dspy.context(lm=api_lm("openai/local-model", api_base=server.url, cache=False)):
            pred = AdaptRec(MOVIES, selection="none", mode="score-calibrated", labels="letters")(
                **example_inputs(row))
    assert pred.valid and all(math.isfinite(s) for s in pred.scores) and len(set(pred.ranking)) == K


def test_a_saved_program_keeps_its_labels(tmp_path):
    """Its instructions and demos name its labels: another labels value would mix numbered wording with letters."""
    from adaptrec_prompts.programs.saving import load_program, save_program

    path = save_program(AdaptRec(MOVIES, selection="none"), tmp_path / "p.json")
    assert load_program(path).labels == "numbers"
    with pytest.raises(ConfigError, match="saved with labels='numbers'"):
        load_program(path, labels="letters")
    lettered = save_program(AdaptRec(MOVIES, selection="none", labels="letters"), tmp_path / "l.json")
    program = load_program(lettered)
    assert program.labels == "letters"
    assert "lettered candidate" in program.recommender.recommend.signature.instructions
