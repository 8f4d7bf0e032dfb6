"""The Python API as a notebook uses it (issue 22): a predictor's own LM wins in score mode, run_eval takes a
program object, neighbours are built by a call, one result type, score calls in the LM history, early
refusals, a public tiny model, predictions that say whom they used, templates by name, and errors that name
the Python argument."""

import io
import json

import dspy
import pytest

import adaptrec_prompts
from adaptrec_prompts import AdaptRec, Results, RunConfig, UserIndex, load_program, run_eval, save_program
from adaptrec_prompts.backends.api import make_lm
from adaptrec_prompts.data.render import load_template
from adaptrec_prompts.errors import ConfigError, OutputExistsError
from adaptrec_prompts.programs.adaptrec import example_inputs
from adaptrec_prompts.programs.recommender import NextItemRecommender
from adaptrec_prompts.programs.selector import UserSelector
from adaptrec_prompts.utils.testing import MockOpenAIServer, logprobs_content
from conftest import with_fake_neighbors

MOVIES = load_template("movies")
SCORE_MODES = ("score", "score-calibrated", "score-permuted")
UNREACHABLE = "http://127.0.0.1:9/v1"  # the discard port: nothing listens, the connection is refused at once


@pytest.fixture(autouse=True)
def clean_settings(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # a key is needed to build the request; no server checks it
    with dspy.context(lm=None, adapter=None):
        yield


@pytest.fixture(scope="module")
def rows(ml100k):
    train = ml100k["train"]
    return [with_fake_neighbors(r, train.select(range(100 + 10 * i, 120 + 10 * i))) for i, r in
            enumerate(ml100k["test"].select(range(2)))]


@pytest.fixture(scope="module")
def tiny_lm(tiny_model):
    return make_lm(f"hf:{tiny_model}")


# 1. score mode honours a predictor's own LM (`set_lm`), in Stage 2 and Stage 3 and every score mode


@pytest.mark.parametrize("mode", SCORE_MODES)
def test_an_unreachable_attached_lm_fails_the_score_call_instead_of_using_the_global_one(rows, tiny_lm, mode):
    program = AdaptRec(MOVIES, selection="static", mode=mode, labels="letters")
    program.set_lm(make_lm("openai/x", api_base=UNREACHABLE, num_retries=0))
    with dspy.context(lm=tiny_lm), pytest.raises(ConfigError, match="'openai/x' cannot score"):
        program(**example_inputs(rows[0]))


@pytest.mark.parametrize("mode", SCORE_MODES)
def test_an_attached_local_lm_scores_both_stages_without_a_global_lm(rows, tiny_lm, mode):
    program = AdaptRec(MOVIES, selection="adaptive", mode=mode, stage2="score", m_select=3)
    program.set_lm(tiny_lm)
    pred = program(**example_inputs(rows[0]))  # no dspy.configure / dspy.context: the predictors' own LM
    assert pred.valid and sorted(pred.ranking) == sorted(rows[0]["candidate_item_ids"])
    assert pred.selection["method"] == "score" and len(pred.selection["indices"]) == 3


def test_the_attached_api_lm_is_the_one_asked_for_scores(rows, tiny_lm):
    answer = "[[ ## answer ## ]]\nB. x\n\n[[ ## completed ## ]]"
    script = lambda number, body: ("logprobs", (answer, logprobs_content(answer, {"B": -0.1, "A": -2.0}, True)))
    program = AdaptRec(MOVIES, selection="static", mode="score", labels="letters")
    with MockOpenAIServer(script) as server:
        program.set_lm(make_lm("openai/mock", api_base=server.url, num_retries=0))
        with dspy.context(lm=tiny_lm):
            pred = program(**example_inputs(rows[0]))
    assert len(server.requests) == 1 and server.requests[0]["logprobs"] is True
    assert pred.ranking[:2] == [rows[0]["candidate_item_ids"][1], rows[0]["candidate_item_ids"][0]]


# 2. run_eval takes a program object; a public call builds the neighbour folder


@pytest.fixture(scope="module")
def neighbours(tmp_path_factory, ml100k_prepared):
    """A sampled collab index of the prepared ML-100K folder and neighbours for its test split, all by calls."""
    root = tmp_path_factory.mktemp("api")
    index = UserIndex.open(root / "chroma", data=ml100k_prepared, pool_size=1000, progress=False)
    out = adaptrec_prompts.build_neighbors(ml100k_prepared, root / "ml-100k-nb", index, n=10, splits=["test"],
                                           progress=False)
    return index, out


def test_build_neighbors_then_run_eval_static_by_name_and_by_object(neighbours, tiny_model, tmp_path):
    index, nb = neighbours
    assert (nb / "manifest.json").is_file()
    assert json.loads((nb / "manifest.json").read_text())["neighbors"]["collection"] == index.name
    lm = f"hf:{tiny_model}"
    by_name = run_eval(RunConfig(data=nb, out=tmp_path / "name", program="static", lm=lm, limit=3), progress=False)
    program = AdaptRec("movies", selection="static", mode="score")
    by_object = run_eval(RunConfig(data=nb, out=tmp_path / "object", program=program, lm=lm, limit=3),
                         progress=False)
    assert by_object.n == by_name.n == 3 and by_object.metrics == by_name.metrics
    assert list(by_object.to_pandas()["ranking"]) == list(by_name.to_pandas()["ranking"])
    manifest = json.loads((tmp_path / "object" / "manifest.json").read_text())
    assert manifest["config"]["program"] == "AdaptRec object" and manifest["program"]["config"] == program.config()


def test_a_program_object_whose_settings_contradict_the_run_config_is_refused(neighbours, tmp_path):
    _index, nb = neighbours
    program = AdaptRec(MOVIES, selection="static", mode="score")
    with pytest.raises(ConfigError, match="RunConfig.mode='generate'.*the program's mode='score'"):
        run_eval(RunConfig(data=nb, out=tmp_path / "x", program=program, lm="hf:m", mode="generate"))
    with pytest.raises(TypeError, match="RunConfig.program"):
        RunConfig(data=nb, out=tmp_path / "x", program=42)


def test_a_program_that_needs_neighbours_is_refused_before_the_lm_loads(ml100k_prepared, tmp_path):
    with pytest.raises(ConfigError, match=r"build_neighbors\(") as caught:
        run_eval(RunConfig(data=ml100k_prepared, out=tmp_path / "r", program="static", lm="hf:/no/such/model"))
    assert "adaptrec index neighbors" not in str(caught.value)  # a library call names the library call


# 3. one result type


def test_evaluate_returns_results_like_run_eval(ml100k_prepared, tmp_path):
    from adaptrec_prompts import evaluate
    from adaptrec_prompts.evaluation.runs import build_program

    rows = list(adaptrec_prompts.load_prepared(ml100k_prepared)["test"].select(range(4)))
    results = evaluate(build_program("baseline:popularity", ml100k_prepared), rows, tmp_path / "pop",
                       progress=False)
    assert isinstance(results, Results) and results.n == 4 and results["n"] == 4
    assert list(results.to_pandas()["example_id"]) == [r["example_id"] for r in rows]


# 4. score-mode calls are in the LM history


def test_score_mode_calls_show_in_inspect_history(rows, tiny_lm):
    program = AdaptRec(MOVIES, selection="static", mode="score", m_select=2)
    with dspy.context(lm=tiny_lm):
        pred = program(**example_inputs(rows[0]))
    shown = io.StringIO()
    program.inspect_history(n=1, file=shown)
    text = shown.getvalue()
    assert rows[0]["history_titles"][0] in text  # the prompt
    best = max(range(20), key=lambda i: pred.scores[i])
    assert f"{pred.scores[best]:.3f}" in text and rows[0]["candidate_titles"][best] in text  # candidates + scores
    entry = tiny_lm.history[-1]
    assert entry["kwargs"]["score_mode"] is True and len(entry["kwargs"]["completions"]) == 20
    shown = io.StringIO()
    dspy.inspect_history(n=1, file=shown)
    assert shown.getvalue() == text


# 5. prepare_dataset refuses an existing folder before building


def test_prepare_dataset_refuses_an_existing_folder_before_reading_anything(tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    with pytest.raises(OutputExistsError, match="overwrite=True") as caught:  # the raw folder is never opened
        adaptrec_prompts.prepare_dataset("ml-100k", out, raw_dir=tmp_path / "no-such-raw-folder")
    assert "--overwrite" not in str(caught.value)


# 6. the tiny local model has a public name


def test_build_tiny_model_is_public_and_loads(ml100k_prepared, tmp_path):
    path = adaptrec_prompts.build_tiny_model(ml100k_prepared, tmp_path / "tiny", texts=50, vocab_size=600)
    assert (path / "config.json").is_file()
    lm = make_lm(f"hf:{path}")
    assert lm.engine.use_chat  # a chat template, as score mode's prompts need


# 7. a prediction says which users were shown and what the top candidate is


def test_a_prediction_carries_the_selected_users_and_the_top_title(rows, tiny_lm):
    row = rows[0]
    with dspy.context(lm=tiny_lm):
        pred = AdaptRec(MOVIES, selection="static", mode="score", m_select=3)(**example_inputs(row))
    assert [u["history_titles"] for u in pred.selected_users] == row["neighbor_history_titles"][:3]
    assert [u["next_title"] for u in pred.selected_users] == row["neighbor_next_titles"][:3]
    assert pred.top_title == row["candidate_titles"][row["candidate_item_ids"].index(pred.ranking[0])]


def test_a_live_prediction_names_the_selected_users(neighbours, tiny_lm):
    index, _nb = neighbours
    program = AdaptRec.from_index(index, template="movies", selection="static", m_select=3, mode="score")
    with dspy.context(lm=tiny_lm):
        pred = program(history_titles=["Star Wars (1977)", "Fargo (1996)", "Heat (1995)"],
                       candidate_titles=["Scream (1996)", "Titanic (1997)", "Contact (1997)"])
    assert [u["user_id"] for u in pred.selected_users] == pred.neighbor_user_ids[:3]
    assert [u["example_id"] for u in pred.selected_users] == pred.neighbor_example_ids[:3]
    assert all(u["history_titles"] and u["next_title"] for u in pred.selected_users)
    assert pred.top_title == pred.ranked_titles[0]


# 8. templates by name wherever a template is taken; wrong types refused when the object is built


def test_template_names_are_accepted_and_wrong_types_refused_at_construction(rows):
    for cls in (AdaptRec, UserSelector, NextItemRecommender):
        assert cls("movies").template == MOVIES
        with pytest.raises(TypeError, match="template=42"):
            cls(42)
    program = AdaptRec("movies", selection="none")
    with dspy.context(lm=dspy.utils.dummies.DummyLM([{"answer": "1"}])):
        assert program(**example_inputs(rows[0])).valid


# Low: bare strings, loaders, repr, make_lm's help


def test_a_bare_string_history_is_a_type_error(rows):
    inputs = {**example_inputs(rows[0]), "history_titles": "Star Wars (1977)"}
    with pytest.raises(TypeError, match="history_titles must be a list of titles"):
        AdaptRec(MOVIES, selection="none")(**inputs)
    with pytest.raises(TypeError, match="candidate_titles must be a list of titles"):
        AdaptRec(MOVIES, selection="none")(**{**example_inputs(rows[0]), "candidate_titles": "Heat (1995)"})


def test_dspy_load_reads_a_saved_program_or_names_the_loader(tmp_path):
    program = AdaptRec(MOVIES, selection="static", mode="score")
    program.recommender.recommend.signature = program.recommender.recommend.signature.with_instructions("Hi.")
    path = save_program(program, tmp_path / "p.json")
    same = AdaptRec(MOVIES, selection="static", mode="score")
    same.load(path)  # DSPy's loader on a save_program file: the state of the same configuration
    assert same.recommender.recommend.signature.instructions == "Hi."
    with pytest.raises(ConfigError, match=r"load_program\("):
        AdaptRec(MOVIES, selection="adaptive", mode="score").load(path)
    program.save(str(tmp_path / "dspy.json"))
    with pytest.raises(ConfigError, match=r"program.load\(path\)"):
        load_program(tmp_path / "dspy.json")


def test_user_index_repr_says_what_it_holds(neighbours):
    index, _nb = neighbours
    text = repr(index)
    assert text.startswith("UserIndex(") and index.name in text and "count=1000" in text and "collab" in text


def test_make_lm_help_documents_its_arguments_publicly():
    doc = adaptrec_prompts.make_lm.__doc__
    for word in ("adapter", "api_base", "max_new_tokens", "device", "num_retries", "Example"):
        assert word in doc
    assert "_hf_lm" not in doc and "backends.hf.hf_lm" in doc


def test_a_program_object_with_its_own_lm_is_refused_by_run_eval(neighbours, tiny_lm, tmp_path):
    _index, nb = neighbours
    program = AdaptRec(MOVIES, selection="static", mode="score")
    program.set_lm(tiny_lm)  # the manifest would name RunConfig.lm while another model scores
    with pytest.raises(ConfigError, match=r"set_lm\(None\)"):
        run_eval(RunConfig(data=nb, out=tmp_path / "x", program=program, lm="hf:other"), lm=tiny_lm)
