"""Prompt iteration: DSPy compile (MIPROv2 without demos, BootstrapFewShot), saved states, diff, no secrets."""

import json

import dspy
import pytest
from dspy.utils.dummies import DummyLM

from adaptrec_prompts.cli.app import main
from adaptrec_prompts.data.render import load_template
from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.evaluation.harness import evaluate
from adaptrec_prompts.programs.adaptrec import AdaptRec
from adaptrec_prompts.programs.chat_adapters import eval_adapter
from adaptrec_prompts.programs.optimize import compile_program, diff_programs, metric_fn, to_examples
from adaptrec_prompts.programs.saving import load_program, save_program

PROPOSER = {"program_description": "It recommends movies.", "module_description": "Stage 3 of AdaptRec.",
            "observations": "Movie histories.", "summary": "Movie data.",
            "proposed_instruction": "Name the one candidate movie this user will watch next."}


@pytest.fixture(scope="module")
def sets(ml100k):
    train = ml100k["train"].shuffle(seed=0, keep_in_memory=True).select(range(6)).to_list()
    return to_examples(train), to_examples(ml100k["valid"].select(range(6)).to_list())


def _target_answers(examples):
    """DummyLM answers keyed by a line unique to each example's prompt: always the right candidate."""
    answers = {}
    for ex in examples:
        number = ex.candidate_ids.index(ex.target_item_id) + 1
        first = ex.history_titles[0]
        answers[f"oldest first: {first};"] = {"answer": f"{number}"}
    return answers


class InstructionSensitive:
    """An engine that answers right (from `answers`) only when the system prompt holds `trigger`."""

    def __init__(self, answers: dict, trigger: str):
        self.answers, self.trigger = answers, trigger

    def complete(self, request):
        from dspy.lm15 import Message, Response, TextPart, Usage

        from adaptrec_prompts.backends.hf import request_messages

        messages = request_messages(request)
        number = "no idea"
        if self.trigger in messages[0]["content"]:
            number = next((v["answer"] for k, v in self.answers.items() if k in messages[-1]["content"]), "no idea")
        return Response(id=None, model="oracle", message=Message.assistant([TextPart(
            f"[[ ## answer ## ]]\n{number}\n\n[[ ## completed ## ]]")]), finish_reason="stop",
            usage=Usage(input_tokens=1, output_tokens=1, total_tokens=2))

    def stream(self, request):
        raise NotImplementedError

    def close(self):
        pass


def test_metric():
    hit = dspy.Prediction(valid=True, ranking=[5, 6])
    invalid = dspy.Prediction(valid=False, ranking=[])
    ex = dspy.Example(target_item_id=5)
    assert metric_fn("hr1")(ex, hit) == 1.0 and metric_fn("hr1")(ex, invalid) == 0.0
    assert metric_fn("hr1+valid")(ex, hit) == pytest.approx(1.1)
    with pytest.raises(ConfigError):
        metric_fn("mrr")


def test_mipro_without_demos_changes_instructions_only(sets, tmp_path):
    train, val = sets
    program = AdaptRec(load_template("movies"), selection="none", mode="generate")
    prompt_lm = DummyLM({"": PROPOSER})
    task_lm = dspy.LM("local/oracle", cache=False, engine=InstructionSensitive(
        _target_answers(list(train) + list(val)), "Name the one candidate"))
    with dspy.context(lm=task_lm, adapter=eval_adapter()):
        compiled = compile_program(program, train, val, "mipro", prompt_lm=prompt_lm, num_trials=3, num_candidates=2)
    assert program.recommender.recommend.signature.instructions != PROPOSER["proposed_instruction"]  # input intact
    new = compiled.recommender.recommend.signature.instructions
    assert new == PROPOSER["proposed_instruction"]  # the proposal that parses wins over "no idea"
    assert compiled.recommender.recommend.demos == []
    a, b = save_program(program, tmp_path / "a.json"), save_program(compiled, tmp_path / "b.json")
    text = diff_programs(a, b)
    assert "recommender.recommend: instructions changed" in text and "+Name the one candidate movie" in text
    assert diff_programs(a, a) == "no differences"


def test_bootstrap_collects_demos_that_pass_the_metric(sets, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-saved")
    train, val = sets
    program = AdaptRec(load_template("movies"), selection="none", mode="generate")
    lm = DummyLM(_target_answers(train))
    with dspy.context(lm=lm, adapter=eval_adapter()):
        compiled = compile_program(program, train, val, "bootstrap", max_demos=2)
    demos = compiled.recommender.recommend.demos
    assert len(demos) == 2 and all("answer" in d for d in demos)
    compiled.recommender.recommend.lm = dspy.LM("openai/gpt-4o-mini", api_base="http://127.0.0.1:9/v1")
    path = save_program(compiled, tmp_path / "programs" / "ml-100k" / "boot.json")
    text = path.read_text()
    assert "sk-never-saved" not in text and "127.0.0.1" not in text  # no keys, no endpoints
    loaded = load_program(path)
    assert len(loaded.recommender.recommend.demos) == 2
    assert "demos 0 -> 2" in diff_programs(save_program(program, tmp_path / "base.json"), path)


def test_bootstrap_needs_generate_mode(sets):
    program = AdaptRec(load_template("movies"), selection="none", mode="score")
    with pytest.raises(ConfigError, match="generate"):
        compile_program(program, *sets, "bootstrap")


def test_compile_command_with_the_tiny_local_model(ml100k_prepared, tiny_model, tmp_path, capsys):
    args = ["compile", "--data", str(ml100k_prepared), "--program", "none", "--optimizer", "bootstrap",
            "--lm", f"hf:{tiny_model}", "--mode", "generate", "--metric", "hr1+valid", "--train-size", "4",
            "--val-size", "4", "--max-new-tokens", "12", "--programs-dir", str(tmp_path / "programs"),
            "--runs-dir", str(tmp_path / "runs"), "--name", "tiny-boot"]
    files_before = sorted(p.name for p in ml100k_prepared.rglob("*"))
    assert main(args) == 0
    assert sorted(p.name for p in ml100k_prepared.rglob("*")) == files_before  # no cache file in frozen data
    printed = capsys.readouterr().out
    assert "budget: optimizer=bootstrap" in printed and "validation before" in printed and "validation after" in printed
    saved = tmp_path / "programs" / "ml-100k" / "tiny-boot.json"
    record = json.loads(saved.with_suffix(".manifest.json").read_text())
    assert record["optimizer"] == "bootstrap" and record["validation"]["n"] == 4
    assert set(record["validation"]["after"]) >= {"HR@1", "ValidRatio"}
    # the saved state loads and evaluates through the harness
    with pytest.raises(ConfigError, match="0 rows"):  # nothing to evaluate is refused, not reported as n=0
        evaluate(load_program(saved, mode="score"), [], tmp_path / "e", {"x": 1}, progress=False)
    assert main(["eval", "--data", str(ml100k_prepared), "--program", str(saved), "--lm", f"hf:{tiny_model}",
                 "--mode", "score", "--limit", "3", "--out", str(tmp_path / "ev"), "--no-progress"]) == 0
    assert main(["programs", "diff", str(saved), str(saved)]) == 0
    assert "no differences" in capsys.readouterr().out


def test_mipro_with_an_unparseable_prompt_lm_says_what_to_do(ml100k_prepared, tiny_model, tmp_path, capsys):
    assert main(["compile", "--data", str(ml100k_prepared), "--program", "none", "--optimizer", "mipro", "--lm",
                 f"hf:{tiny_model}", "--train-size", "3", "--val-size", "3", "--num-trials", "1",
                 "--num-candidates", "2", "--max-new-tokens", "8", "--programs-dir", str(tmp_path / "p"),
                 "--runs-dir", str(tmp_path / "r")]) == 2
    assert "--prompt-lm" in capsys.readouterr().err
