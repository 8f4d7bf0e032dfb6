"""`lora.export_adapter` / finetune/export_adapter.py: the shipped copy of an adapter is fp16, carries its
training record and nothing peft or torch would unpickle, and scores like the fp32 original."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adaptrec_prompts.errors import ConfigError, OutputExistsError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained_like(tmp_path_factory, tiny_model):
    """A peft LoRA folder with non-zero B matrices (so the adapter changes scores) and what training leaves beside
    it: a manifest without the architecture record, a checkpoint, a tokenizer copy and TRL's pickled args."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("adapters") / "trained"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(out)
    (out / "adaptrec_manifest.json").write_text(json.dumps({"base_model": str(tiny_model), "program": {"prompt": "compact"}}))
    (out / "choice_diagnostics.jsonl").write_text('{"step": 0, "choice_nll": 3.0}\n')
    (out / "checkpoint-4").mkdir()
    (out / "checkpoint-4" / "optimizer.pt").write_bytes(b"x")
    (out / "tokenizer.json").write_text("{}")
    (out / "training_args.bin").write_bytes(b"\x80\x04pickle")
    return out


def test_the_copy_is_fp16_with_the_record_and_without_pickles(trained_like, tiny_model, tmp_path):
    from safetensors.torch import load_file

    from adaptrec_prompts.backends.lora import architecture, export_adapter

    out = export_adapter(trained_like, tmp_path / "shipped")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                     "adaptrec_manifest.json", "choice_diagnostics.jsonl"]
    original, copy = load_file(trained_like / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert set(copy) == set(original) and {str(t.dtype) for t in copy.values()} == {"torch.float16"}
    assert {str(t.dtype) for t in original.values()} == {"torch.float32"}
    assert (out / "adapter_model.safetensors").stat().st_size < 0.6 * (trained_like / "adapter_model.safetensors").stat().st_size
    recorded = json.loads((out / "adaptrec_manifest.json").read_text())
    assert recorded["base_model_architecture"] == architecture(tiny_model)  # filled from the base it names
    assert recorded["exported"]["dtype"] == "float16" and recorded["exported"]["from"] == str(trained_like)
    assert recorded["program"] == {"prompt": "compact"}
    assert "base_model_architecture" not in json.loads((trained_like / "adaptrec_manifest.json").read_text())


def test_the_fp16_copy_ranks_like_the_original(trained_like, tiny_model, stage3, tmp_path):
    from adaptrec_prompts.backends.hf import HFEngine
    from adaptrec_prompts.backends.lora import export_adapter

    messages, completions = stage3
    shipped = export_adapter(trained_like, tmp_path / "shipped")
    plain = np.array(HFEngine.load(tiny_model).score(messages, completions))
    fp32 = np.array(HFEngine.load(tiny_model, adapter=trained_like).score(messages, completions))
    fp16 = np.array(HFEngine.load(tiny_model, adapter=shipped).score(messages, completions))
    assert not np.allclose(plain, fp32, atol=1e-3)  # the adapter matters, so the comparison below can fail
    np.testing.assert_allclose(fp16, fp32, atol=2e-2)
    assert list(np.argsort(-fp16)[:5]) == list(np.argsort(-fp32)[:5])


def test_bad_input_and_an_existing_folder_are_refused(trained_like, tmp_path):
    from adaptrec_prompts.backends.lora import export_adapter

    with pytest.raises(ConfigError, match="has no adapter_config.json"):
        export_adapter(tmp_path, tmp_path / "x")
    with pytest.raises(ConfigError, match="dtype='int8'; use one of float16, bfloat16, float32"):
        export_adapter(trained_like, tmp_path / "x", dtype="int8")
    (tmp_path / "taken").mkdir()
    with pytest.raises(OutputExistsError, match="exists; choose another folder or pass overwrite=True"):
        export_adapter(trained_like, tmp_path / "taken")
    assert export_adapter(trained_like, tmp_path / "taken", overwrite=True).joinpath("adapter_config.json").is_file()
    (tmp_path / "a-file").write_text("x")
    assert export_adapter(trained_like, tmp_path / "a-file", overwrite=True, dtype="float32").is_dir()


def test_other_dtypes_and_a_failed_export_leaves_nothing_behind(trained_like, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from adaptrec_prompts.backends.lora import export_adapter

    for dtype in ("bfloat16", "float32"):
        out = export_adapter(trained_like, tmp_path / dtype, dtype=dtype)
        assert {str(t.dtype) for t in load_file(out / "adapter_model.safetensors").values()} == {f"torch.{dtype}"}
    broken = tmp_path / "broken"
    shutil.copytree(trained_like, broken)
    (broken / "adaptrec_manifest.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        export_adapter(broken, tmp_path / "never")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bfloat16", "broken", "float32"]  # no .partial, no out


def test_the_script_prints_what_it_wrote_and_refuses_with_exit_2(trained_like, tmp_path):
    script = [sys.executable, str(ROOT / "finetune" / "export_adapter.py")]
    done = subprocess.run([*script, str(trained_like), str(tmp_path / "a")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and "float16): adapter_config.json, adapter_model.safetensors" in done.stdout, done.stderr
    again = subprocess.run([*script, str(trained_like), str(tmp_path / "a")], capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 2 and "exists; choose another folder" in again.stderr


@pytest.mark.parametrize("name", ["ml-100k-listwise-static", "ml-100k-listwise-zero-shot"])
def test_the_shipped_adapters_are_what_their_manifests_say(name):
    import hashlib

    from adaptrec_prompts.backends.lora import trained_settings

    folder = ROOT / "finetune" / "adapters" / name
    recorded = json.loads((folder / "adaptrec_manifest.json").read_text())
    digest = hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert recorded["exported"]["weights_sha256"] == digest and recorded["exported"]["dtype"] == "float16"
    assert recorded["base_model_architecture"]["vocab_size"] == 262144  # Gemma 3 270M
    assert trained_settings(folder) == {"prompt": "compact", "labels": "titles", "demo_items": 5}
    assert recorded["program"]["selection"] == ("static" if name.endswith("static") else "none")
    assert not list(folder.glob("*.bin")) and not list(folder.glob("checkpoint-*"))


def test_the_main_job_finds_the_shipped_adapters_for_gemma_only():
    from adaptrec_prompts.experiments.pipeline import adapter_program, shipped_adapters

    found = shipped_adapters("gemma-3-270m")
    assert found == [ROOT / "finetune" / "adapters" / "ml-100k-listwise-zero-shot",
                     ROOT / "finetune" / "adapters" / "ml-100k-listwise-static"]
    assert [adapter_program(f)["selection"] for f in found] == ["none", "static"]
    assert adapter_program(found[1]) == {"selection": "static", "m": 5, "demo_items": 5}
    assert shipped_adapters("hf:artifacts/models/tiny") == [] and shipped_adapters("openai/gpt-4o") == []
