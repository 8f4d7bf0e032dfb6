"""The local Hugging Face backend on a tiny locally built Llama (no hub): scoring, generation, DSPy wiring."""

import dspy
import numpy as np
import pytest

from adaptrec_prompts.backends.hf import END_MARKER, HFEngine, hf_lm
from adaptrec_prompts.data.render import load_template
from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.programs.adaptrec import AdaptRec, example_inputs
from adaptrec_prompts.programs.chat_adapters import eval_adapter
from conftest import with_fake_neighbors

MOVIES = load_template("movies")


@pytest.fixture(scope="module")
def engine(tiny_model):
    return HFEngine.load(tiny_model, max_new_tokens=12)


@pytest.mark.parametrize("prompt_format", ["chat", "plain"])
def test_score_with_shared_prefill_equals_k_separate_passes(tiny_model, stage3, prompt_format):
    engine = HFEngine.load(tiny_model, prompt_format=prompt_format)
    messages, completions = stage3
    assert len(completions) == 20
    fast = np.array(engine.score(messages, completions))
    slow = np.array(engine.score_separately(messages, completions))
    np.testing.assert_allclose(fast, slow, atol=1e-4, rtol=0)
    assert np.all(fast < 0) and len(set(fast.round(3))) > 1


def test_plain_and_chat_prompts_differ(tiny_model, stage3):
    messages, _ = stage3
    chat, plain = HFEngine.load(tiny_model, prompt_format="chat"), HFEngine.load(tiny_model, prompt_format="plain")
    assert chat.render(messages).startswith("<s><|system|>") and chat.render(messages).endswith("<|assistant|>\n")
    assert plain.render(messages) == messages[0]["content"] + "\n\n" + messages[1]["content"] + "\n\n"


def test_chat_format_requires_a_template(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert HFEngine.load(tiny_model).use_chat  # auto picks the chat template when present
    tok.chat_template = None
    tok.save_pretrained(tmp_path)
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((tiny_model / name).read_bytes())
    assert not HFEngine.load(tmp_path).use_chat  # base model: plain fallback
    with pytest.raises(ConfigError, match="no chat template"):
        HFEngine.load(tmp_path, prompt_format="chat")


def test_batched_generation_equals_one_by_one(engine, stage3):
    messages, _ = stage3
    short = [messages[0], {"role": "user", "content": "The user watched these 3 movies."}]
    batch = engine.generate([messages, short])
    assert [g.text for g in batch] == [engine.generate([messages])[0].text, engine.generate([short])[0].text]
    assert batch[0].prompt_tokens > batch[1].prompt_tokens and batch[0].completion_tokens > 0


def test_generation_stops_at_the_stop_string(tiny_model, stage3):
    messages, _ = stage3
    free = HFEngine.load(tiny_model, max_new_tokens=12).generate([messages])[0].text
    stop = free[2:5]
    stopped = HFEngine.load(tiny_model, max_new_tokens=12, stop=(stop,)).generate([messages])[0]
    assert stopped.text.endswith(stop) and len(stopped.text) < len(free)
    assert END_MARKER == "[[ ## completed ## ]]"


def test_missing_model_folder():
    with pytest.raises(ConfigError, match="model folder"):
        HFEngine.load("/nonexistent/model")


def test_device_is_where_the_weights_are_and_cuda_without_cuda_says_so(tiny_model, stage3):
    import torch

    engine = HFEngine.load(tiny_model, device="auto" if not torch.cuda.is_available() else "cpu")
    assert engine.device == torch.device("cpu")
    messages, completions = stage3
    assert engine.score(messages, completions[:3]) == pytest.approx(engine.score_separately(messages, completions[:3]),
                                                                     abs=1e-4)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            HFEngine.load(tiny_model, device="cuda")


@pytest.mark.parametrize("selection", ["none", "random", "static", "adaptive"])
@pytest.mark.parametrize("mode", ["generate", "score"])
def test_adaptrec_end_to_end_on_ml100k(tiny_model, ml100k, selection, mode):
    lm = hf_lm(tiny_model, max_new_tokens=8)
    program = AdaptRec(MOVIES, selection=selection, n_retrieve=10, m_select=3, mode=mode)
    rows = [with_fake_neighbors(r, ml100k["train"].select(range(10 * i, 10 * i + 10)))
            for i, r in enumerate(ml100k["test"].select(range(2)))]
    with dspy.context(lm=lm):
        preds = [program(**example_inputs(r)) for r in rows]
    for row, pred in zip(rows, preds):
        if mode == "score":
            assert pred.valid and sorted(pred.ranking) == sorted(row["candidate_item_ids"])
            assert len(pred.scores) == 20
        else:  # a random tiny model writes junk: the point is that it flows through parse, invalid or not
            assert isinstance(pred.valid, bool) and (pred.valid or pred.reason)
            assert pred.raw is not None or pred.reason
        if selection == "adaptive":
            assert pred.selection["fallback"] or len(pred.selection["indices"]) == 3
    if mode == "generate":
        assert lm.history and lm.history[-1]["usage"]["prompt_tokens"] > 100


def test_peft_adapter_changes_outputs_and_reloads(tmp_path, tiny_model, stage3):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    messages, completions = stage3
    plain = HFEngine.load(tiny_model).score(messages, completions[:3])
    adapted = HFEngine.load(tiny_model, adapter=tmp_path / "adapter").score(messages, completions[:3])
    again = HFEngine.load(tiny_model, adapter=tmp_path / "adapter").score(messages, completions[:3])
    assert not np.allclose(plain, adapted, atol=1e-3)
    np.testing.assert_allclose(adapted, again, atol=1e-6)


def test_base_model_generation_prefills_the_field_header_and_stops_at_the_line(tiny_model, stage3):
    from dspy.lm15 import Message, Request

    from adaptrec_prompts.backends.hf import first_field_header

    messages, _ = stage3
    assert first_field_header(messages) == "[[ ## answer ## ]]\n"
    engine = HFEngine.load(tiny_model, prompt_format="plain", prefill_field=True, max_new_tokens=12)
    request = Request(model="tiny", messages=(Message.user(messages[1]["content"]),), system=messages[0]["content"])
    text = engine.complete(request).message.text
    assert text.startswith("[[ ## answer ## ]]\n") and text.endswith("\n\n[[ ## completed ## ]]")
    body = text[len("[[ ## answer ## ]]\n") : -len("\n\n[[ ## completed ## ]]")]
    assert "\n" not in body  # one line: generation stopped at the newline (or the token budget)


def test_dense_gemma_copy_drops_the_gguf_quantization_flag(tmp_path):
    """A dequantized copy whose config still says "gguf" would be refused by the Trainer as quantized."""
    import json

    from adaptrec_prompts.backends.gemma import strip_quantization_config

    config = {"model_type": "gemma3_text", "hidden_size": 640,
              "quantization_config": {"quant_method": "gguf", "gguf_file": "x.gguf", "dequantize": False}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert strip_quantization_config(tmp_path) is True
    assert json.loads((tmp_path / "config.json").read_text()) == {"model_type": "gemma3_text", "hidden_size": 640}
    assert strip_quantization_config(tmp_path) is False


def test_stage2_score_mode_keeps_the_m_users_most_likely_to_open_the_list(tiny_model, ml100k):
    from adaptrec_prompts.programs.selector import UserSelector, stage2_completions

    lm = hf_lm(tiny_model)
    row = with_fake_neighbors(ml100k["test"][0], ml100k["train"], n=8)
    pool = row["neighbor_history_titles"]
    selector = UserSelector(MOVIES, m_select=3, mode="score")
    with dspy.context(lm=lm):
        pred = selector(history_titles=row["history_titles"], pool_histories=pool)
    messages = eval_adapter().format(selector.select.signature, [], selector.inputs(row["history_titles"], pool, 3))
    reference = lm.engine.score_separately(messages, stage2_completions(len(pool), 3))
    best = sorted(range(len(pool)), key=lambda i: (-reference[i], i))[:3]
    assert (pred.method, pred.fallback, pred.indices) == ("score", False, sorted(best))
    assert stage2_completions(10, 3)[0].endswith("\n[1,") and stage2_completions(2, 1)[1].endswith("\n[2]")
    program = AdaptRec(MOVIES, selection="adaptive", n_retrieve=8, m_select=3, mode="score")
    with dspy.context(lm=lm):
        out = program(**example_inputs(row))
    assert out.selection["method"] == "score" and out.selection["indices"] == sorted(best) and out.valid


def test_calibrated_score_mode_subtracts_the_content_free_prompt(tiny_model, ml100k):
    from adaptrec_prompts.programs.recommender import NULL_HISTORY, answer_block
    from adaptrec_prompts.programs.signatures import RecommendNextItemZeroShot

    lm = hf_lm(tiny_model)
    row = with_fake_neighbors(ml100k["test"][0], ml100k["train"], n=5)
    titles, ids = row["candidate_titles"], row["candidate_item_ids"]
    adapter = eval_adapter()
    for selection in ("none", "static"):
        plain = AdaptRec(MOVIES, selection=selection, n_retrieve=5, m_select=2, mode="score")
        calibrated = AdaptRec(MOVIES, selection=selection, n_retrieve=5, m_select=2, mode="score-calibrated")
        with dspy.context(lm=lm):
            raw = plain(**example_inputs(row)).scores
            cal = calibrated(**example_inputs(row))
        rec = calibrated.recommender
        completions = [answer_block(adapter.format_assistant_message_content(
            rec.recommend.signature, {"answer": rec.answer_text(i, t)})) for i, t in enumerate(titles, start=1)]
        null = adapter.format(RecommendNextItemZeroShot, [], {"user_history": NULL_HISTORY,
                                                              "candidates": MOVIES.render_candidates(titles)})
        prior = lm.engine.score_separately(null, completions)
        np.testing.assert_allclose(cal.scores, np.array(raw) - np.array(prior), atol=2e-4)
        assert cal.valid and sorted(cal.ranking) == sorted(ids)


def test_permuted_score_mode_averages_each_candidate_over_shifted_lists(tiny_model, ml100k):
    lm = hf_lm(tiny_model)
    row = with_fake_neighbors(ml100k["test"][1], ml100k["train"], n=5)
    ids, k = row["candidate_item_ids"], len(row["candidate_item_ids"])
    program = AdaptRec(MOVIES, selection="static", n_retrieve=5, m_select=2, mode="score-permuted", orders=3)
    plain = AdaptRec(MOVIES, selection="static", n_retrieve=5, m_select=2, mode="score")
    expected = np.zeros(k)
    with dspy.context(lm=lm):
        permuted = program(**example_inputs(row))
        for shift in (0, k // 3, 2 * k // 3):  # the list as shown at each shift, scored by plain score mode
            order = [(i + shift) % k for i in range(k)]
            shown = {**row, "candidate_item_ids": [ids[i] for i in order],
                     "candidate_titles": [row["candidate_titles"][i] for i in order]}
            for j, score in enumerate(plain(**example_inputs(shown)).scores):
                expected[order[j]] += score / 3
    np.testing.assert_allclose(permuted.scores, expected, atol=2e-4)
    assert permuted.valid and sorted(permuted.ranking) == sorted(ids)
    assert program.config()["orders"] == 3 and "orders" not in plain.config()


class _Records(__import__("logging").Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_scoring_and_generation_log_no_deprecated_cache_warning(tiny_model, stage3):
    """transformers 5 logs "`past_key_values`/`cache_params` are deprecated. Use `cache` instead." (once per
    process, through its own logger, which does not propagate to the root logger: caplog would not see it)
    whenever the old name is read or passed; the engine uses `cache` throughout."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.warning_once.cache_clear()  # an earlier test may have used up the "once"
    handler = _Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            engine = HFEngine.load(tiny_model, max_new_tokens=4, progress=False)
            messages, completions = stage3
            engine.score(messages, completions)  # the shared prefill, then the tree pass over its cache
            engine.generate([messages])
    finally:
        logger.removeHandler(handler)
    noise = [m for m in handler.messages + [str(w.message) for w in caught] if "deprecated" in m.lower()]
    assert noise == []


def test_loading_draws_no_transformers_bar_with_progress_off(tiny_model, capfd, monkeypatch):
    from adaptrec_prompts.utils import progress

    monkeypatch.setattr(progress, "_stderr_is_terminal", lambda: True)  # where transformers would draw it
    monkeypatch.delenv("CI", raising=False)
    HFEngine.load(tiny_model, progress=False)
    assert "Loading weights" not in capfd.readouterr().err
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()  # switched back on for everything else
