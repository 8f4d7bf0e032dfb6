"""Integrity failures (issue 23): nothing from a file may choose the model or the server, an adapter is checked
against what it was trained for, damaged index and data files are named, outputs are never replaced unasked,
and every numeric setting is checked where it is read. Each test failed before its fix
(docs/failure-behaviour.md has the user-facing table)."""

import json

import pytest

from adaptrec_prompts.cli.app import main
from adaptrec_prompts.data.render import load_template
from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.programs.adaptrec import AdaptRec
from adaptrec_prompts.programs.saving import load_program, save_program

ANSWER = "[[ ## answer ## ]]\n1\n\n[[ ## completed ## ]]"


def _program_file(tmp_path, edit, name="p.json", **config):
    path = save_program(AdaptRec(load_template("movies"), selection="none", **config), tmp_path / name)
    payload = json.loads(path.read_text())
    edit(payload)
    path.write_text(json.dumps(payload))
    return path


# ---- security: a program file must not choose the model or the server ----

def test_a_program_file_naming_an_lm_is_refused_and_no_server_is_asked(ml100k_prepared, tmp_path, capsys,
                                                                        monkeypatch):
    from adaptrec_prompts.utils.testing import MockOpenAIServer

    def inject(payload):
        payload["state"]["recommender.recommend"]["lm"] = {"model": "openai/gpt-4o-mini", "temperature": 1.7,
                                                           "max_tokens": 3}

    path = _program_file(tmp_path, inject)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    with MockOpenAIServer(lambda n, body: ("ok", ANSWER)) as elsewhere, \
            MockOpenAIServer(lambda n, body: ("ok", ANSWER)) as named:
        monkeypatch.setenv("OPENAI_BASE_URL", elsewhere.url)  # where DSPy's rebuilt LM would send its requests
        code = main(["eval", "--data", str(ml100k_prepared), "--program", str(path), "--lm", "openai/mock",
                     "--api-base", named.url, "--mode", "generate", "--limit", "3", "--no-progress",
                     "--retries", "0", "--num-retries", "0", "--out", str(tmp_path / "run")])
        assert elsewhere.requests == [] and named.requests == []
    err = capsys.readouterr().err
    assert code == 2 and str(path) in err and "state['recommender.recommend']['lm']" in err
    assert "must not name a model or a server" in err
    assert not (tmp_path / "run" / "predictions.jsonl").exists()


@pytest.mark.parametrize(("where", "edit"), [
    ("state['recommender.recommend']['forward']",
     lambda p: p["state"]["recommender.recommend"].update(forward="not callable")),
    ("state['recommender.recommend']['signature']['extra']",
     lambda p: p["state"]["recommender.recommend"]["signature"].update(extra=1)),
    ("key 'lm'", lambda p: p.update(lm={"model": "openai/gpt-4o-mini"})),
    ("config['api_base']", lambda p: p["config"].update(api_base="http://127.0.0.1:9/v1")),
    ("state['recommender.recommend']['demos']", lambda p: p["state"]["recommender.recommend"].update(demos="x")),
    ("config['template']", lambda p: p["config"].update(template="/etc/x.toml")),
    ("state['other.predict']", lambda p: p["state"].update({"other.predict": {}})),
])
def test_a_program_file_with_a_key_save_program_never_writes_is_refused(tmp_path, where, edit):
    path = _program_file(tmp_path, edit)
    with pytest.raises(ConfigError) as info:
        load_program(path)
    assert str(path) in str(info.value) and where in str(info.value), str(info.value)


def test_a_saved_program_still_loads(tmp_path):
    path = _program_file(tmp_path, lambda p: None, mode="generate")
    assert load_program(path).config() == AdaptRec(load_template("movies"), selection="none", mode="generate").config()


# ---- numeric settings: checked where they are read, with the valid range ----

@pytest.mark.parametrize(("option", "value", "message"), [
    ("--n", "0", "argument --n: must be >= 1, got 0"), ("--n", "-5", "argument --n: must be >= 1, got -5"),
    ("--timeout", "0", "argument --timeout: must be a number of seconds > 0 (e.g. 120), got 0"),
    ("--num-retries", "-1", "argument --num-retries: must be a whole number >= 0 (0: no retry), got -1"),
    ("--seed", "-3", "argument --seed: must be >= 0, got -3"),
    ("--threads", "0", "argument --threads: must be >= 1, got 0"),
    ("--demo-items", "0", "argument --demo-items: must be >= 1, got 0"),
])
def test_numeric_eval_options_are_refused_with_their_range(ml100k_prepared, tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit):
        main(["eval", "--data", str(ml100k_prepared), "--program", "baseline:userknn", option, value,
              "--out", str(tmp_path / "run")])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_numeric_options_of_other_commands_and_config_files(ml100k_prepared, tmp_path, capsys):
    for argv, message in (
            (["index", "neighbors", "--data", "d", "--out", "o", "--n", "0"], "argument --n: must be between 1 and 50, got 0"),
            (["index", "neighbors", "--data", "d", "--out", "o", "--overfetch", "0"], "--overfetch: must be >= 1"),
            (["data", "prepare", "--dataset", "ml-100k", "--out", "o", "--seed", "-1"], "--seed: must be >= 0"),
            (["sft-experiment", "--data", "d", "--out", "o", "--learning-rate", "0"], "--learning-rate: must be > 0"),
            (["compile", "--data", "d", "--lm", "x", "--num-trials", "0"], "--num-trials: must be >= 1")):
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err, argv
    config = tmp_path / "run.yaml"
    config.write_text("n: -5\n")
    with pytest.raises(SystemExit):
        main(["eval", "--config", str(config), "--data", str(ml100k_prepared), "--program", "baseline:userknn",
              "--out", str(tmp_path / "run")])
    assert "run.yaml: n: must be >= 1, got -5" in capsys.readouterr().err


def test_numeric_settings_are_checked_by_the_library_too(tmp_path):
    from adaptrec_prompts.data.protocol import ProtocolConfig
    from adaptrec_prompts.evaluation.baselines import UserKNNBaseline
    from adaptrec_prompts.evaluation.runs import RunConfig

    for n in (0, -5):  # 0 ranked like Popularity, -5 like 5 (Python slicing)
        with pytest.raises(ConfigError, match=rf"n_retrieve \(--n\) must be >= 1, got {n}"):
            UserKNNBaseline([[1, 2, 3]], n_retrieve=n)
    for field, value, message in (("n", 0, "RunConfig.n must be >= 1, got 0"),
                                  ("timeout", 0.0, "--timeout 0.0: must be a number of seconds > 0"),
                                  ("num_retries", -1, "--num-retries -1: must be a whole number >= 0"),
                                  ("m", "5", "RunConfig.m expected a whole number, got '5'")):
        with pytest.raises(ConfigError, match=message):
            RunConfig(data="d", out="o", **{field: value})
    with pytest.raises(ConfigError, match=r"seed \(--seed\) must be >= 0, got -1"):
        ProtocolConfig(seed=-1)
    path = _program_file(tmp_path, lambda p: p["config"].update(n_retrieve=-5, m_select=1))
    with pytest.raises(ConfigError, match=r"p.json: config: n_retrieve \(--n\) must be >= 1, got -5"):
        load_program(path)


# ---- `index neighbors`: one writer per --out, an existing folder replaced only with --overwrite ----

@pytest.fixture(scope="module")
def gr(tmp_path_factory, goodreads_raw):
    from adaptrec_prompts.data.prepare import build, save
    from adaptrec_prompts.data.protocol import ProtocolConfig

    root = tmp_path_factory.mktemp("gr")
    return save(*build("goodreads", goodreads_raw, ProtocolConfig(k_candidates=10)), root / "gr")


def _index(gr, chroma):
    from adaptrec_prompts.retrieval.embedders import make_embedder
    from adaptrec_prompts.retrieval.index import make_client
    from adaptrec_prompts.retrieval.index import open_index

    embedder = make_embedder("collab", gr)
    return open_index(gr, embedder, make_client(path=chroma), progress=False), embedder


def test_a_neighbour_folder_being_written_is_not_written_twice(gr, tmp_path):
    import subprocess
    import sys

    from adaptrec_prompts.errors import RunInUseError
    from adaptrec_prompts.retrieval.neighbors import add_neighbors

    index, embedder = _index(gr, tmp_path / "chroma")
    lock = tmp_path / ".nb.lock"
    lock.write_text("pid 4242")
    holder = subprocess.Popen([sys.executable, "-c", f"import fcntl, time; h = open({str(lock)!r}); "
                               "fcntl.flock(h, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUseError, match=r"nb is being written by pid 4242 .*choose another --out"):
            add_neighbors(gr, tmp_path / "nb", index, embedder, n=3, splits=["test"], progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "nb").exists()



# ---- prepared data: the recorded hashes are checked when a folder is opened ----

@pytest.mark.parametrize("damage", ["truncate", "flip", "items"])
def test_a_damaged_prepared_file_is_named_not_a_crash(gr, tmp_path, damage):
    import shutil

    from adaptrec_prompts.data.prepare import load_items, load_prepared
    from adaptrec_prompts.errors import DataError

    folder = tmp_path / "gr"
    shutil.copytree(gr, folder)
    name = "items.jsonl" if damage == "items" else "test/data-00000-of-00001.arrow"
    target = folder / name
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # a few bytes flipped in the middle (a segfault or a UnicodeDecodeError before)
        for i in range(len(data) // 2, len(data) // 2 + 4):
            data[i] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(DataError, match=name.replace(".", r"\.") + ".*re-create the folder"):
        load_prepared(folder)["test"].to_list()
    with pytest.raises(DataError, match=name.replace(".", r"\.")):
        load_items(folder)


def test_data_verify_and_eval_name_the_damaged_file(gr, tmp_path, capsys):
    import shutil

    folder = tmp_path / "gr"
    shutil.copytree(gr, folder)
    assert main(["data", "verify", str(folder)]) == 0
    assert "match their recorded sha256" in capsys.readouterr().out
    arrow = folder / "test" / "data-00000-of-00001.arrow"
    arrow.write_bytes(arrow.read_bytes()[:-100])
    for argv in (["data", "verify", str(folder)],
                 ["eval", "--data", str(folder), "--program", "baseline:popularity", "--out", str(tmp_path / "run")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{arrow}: " in err and "truncated or changed" in err, err
    assert not (tmp_path / "run").exists()


# ---- Stage-1 index: a change anywhere in the HNSW files is found (not only what a 20-vector probe sees) ----

def test_partial_index_damage_is_found_by_the_recorded_checksums_and_rebuilt(ml100k_prepared, tmp_path, caplog):
    import datasets
    from chromadb.api.client import SharedSystemClient

    from adaptrec_prompts.retrieval.embedders import make_embedder
    from adaptrec_prompts.retrieval.index import make_client
    from adaptrec_prompts.retrieval.index import open_index
    from adaptrec_prompts.retrieval.neighbors import add_neighbors

    embedder = make_embedder("collab", ml100k_prepared)

    def index():
        return open_index(ml100k_prepared, embedder, make_client(path=tmp_path / "chroma"), pool_size=3000,
                          progress=False)

    add_neighbors(ml100k_prepared, tmp_path / "intact", index(), embedder, n=5, splits=["test"], progress=False)
    SharedSystemClient.clear_system_cache()  # as a new process would: read the files again
    (graph,) = (tmp_path / "chroma").rglob("data_level0.bin")
    data = bytearray(graph.read_bytes())
    start = len(data) // 2
    data[start : start + len(data) // 50] = bytes(len(data) // 50)  # 2% zeroed: the 20-vector probe missed it
    graph.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        damaged = index()
    assert getattr(damaged, "rebuilt_after_damage", False) and damaged.count() == 3000
    assert f"{graph}: its sha256 differs" in caplog.text
    add_neighbors(ml100k_prepared, tmp_path / "after", damaged, embedder, n=5, splits=["test"], progress=False)
    before = datasets.load_from_disk(str(tmp_path / "intact"))["test"]["neighbor_example_ids"]
    assert datasets.load_from_disk(str(tmp_path / "after"))["test"]["neighbor_example_ids"] == before
    SharedSystemClient.clear_system_cache()
    caplog.clear()
    with caplog.at_level("WARNING"):  # the rebuilt index recorded its own checksums: opened as is
        assert not getattr(index(), "rebuilt_after_damage", False)
    assert "damaged" not in caplog.text


# ---- `--adapter`: only what training writes, checked against the base model and prompt it was trained for ----

@pytest.fixture(scope="module")
def other_base(tmp_path_factory, ml100k):
    """A micro Llama like `tiny_model` but with another tokenizer (vocabulary 600): same layer sizes, so peft
    would load a LoRA trained on one into the other without a word."""
    from adaptrec_prompts.backends.tiny import build_tiny_llama, prompt_corpus

    return build_tiny_llama(prompt_corpus(ml100k["train"].select(range(200)), load_template("movies")),
                            tmp_path_factory.mktemp("models") / "other", size="micro", vocab_size=600,
                            chat_template=True)


def _adapter(base, out, record_architecture=True, **program):
    """A real (untrained) peft LoRA folder on `base`, with the adaptrec_manifest.json training writes."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from adaptrec_prompts.backends.lora import architecture

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(out)
    config = AdaptRec(load_template("movies"), selection="none", **program).config()
    (out / "adaptrec_manifest.json").write_text(json.dumps(
        {"base_model": str(base), "program": config,
         **({"base_model_architecture": architecture(base)} if record_architecture else {})}))
    return out


@pytest.mark.parametrize("recorded", [True, False])  # False: an adapter trained before the record (base folder read)
def test_an_adapter_trained_on_another_base_model_is_refused(ml100k_prepared, tiny_model, other_base, tmp_path,
                                                             capsys, recorded):
    adapter = _adapter(other_base, tmp_path / "adapter", record_architecture=recorded)
    code = main(["eval", "--data", str(ml100k_prepared), "--program", "none", "--lm", f"hf:{tiny_model}",
                 "--adapter", str(adapter), "--limit", "1", "--no-progress", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "was trained on another base model" in err and "vocab_size 600 (trained)" in err, err
    assert not (tmp_path / "run" / "predictions.jsonl").exists()


def test_an_adapter_is_run_with_its_trained_prompt_or_refused(ml100k_prepared, tiny_model, tmp_path, capsys, caplog):
    adapter = _adapter(tiny_model, tmp_path / "adapter", prompt="compact", labels="numbers")
    base = ["eval", "--data", str(ml100k_prepared), "--program", "none", "--lm", f"hf:{tiny_model}", "--adapter",
            str(adapter), "--limit", "1", "--no-progress"]
    assert main([*base, "--prompt", "full", "--labels", "letters", "--out", str(tmp_path / "asked")]) == 2
    err = capsys.readouterr().err
    assert "was trained with {'prompt': 'compact', 'labels': 'numbers'" in err and "Leave these options out" in err
    assert not (tmp_path / "asked").exists()
    with caplog.at_level("WARNING"):
        assert main([*base, "--out", str(tmp_path / "default")]) == 0  # not given: the adapter's, and said so
    assert "using the prompt settings it was trained with: prompt=compact" in caplog.text
    manifest = json.loads((tmp_path / "default" / "manifest.json").read_text())
    assert manifest["config"]["program_config"]["prompt"] == "compact"


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c.update(megatron_core="os"), "megatron_core='os' would make peft import"),
    (lambda c: c.update(auto_mapping={"base_model_class": "X", "parent_library": "os"}), "names code outside"),
    (lambda c: c.update(layer_replication=[[0, 2]]), "layer_replication="),
    (lambda c: c.update(trust_remote_code=True), "key 'trust_remote_code' is not a LoRA setting"),
    (lambda c: c.update(peft_type="PROMPT_TUNING"), "only LoRA adapters"),
    ("pickle", "no adapter_model.safetensors (found adapter_model.bin: a pickle, not loaded)"),
])
def test_an_adapter_folder_with_what_training_never_writes_is_refused(tiny_model, tmp_path, edit, message):
    from adaptrec_prompts.backends.hf import HFEngine

    adapter = _adapter(tiny_model, tmp_path / "adapter")
    if edit == "pickle":  # the weights as a torch pickle, which peft would torch.load
        import torch
        from safetensors.torch import load_file

        torch.save(load_file(adapter / "adapter_model.safetensors"), adapter / "adapter_model.bin")
        (adapter / "adapter_model.safetensors").unlink()
    else:
        config = json.loads((adapter / "adapter_config.json").read_text())
        edit(config)
        (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        HFEngine.load(tiny_model, adapter=adapter)
