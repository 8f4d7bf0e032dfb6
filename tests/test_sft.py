"""finetune/sft.py and sft_data: identical prompts, a real TRL + LoRA run on a tiny local Llama, the callback."""

import importlib.util
import json
import sys
from pathlib import Path

import dspy
import numpy as np
import pytest
import torch

from adaptrec_prompts.data.prepare import build, save
from adaptrec_prompts.data.protocol import ProtocolConfig
from adaptrec_prompts.data.render import load_template
from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.finetune.rows import build_rows, stage2_label, stage2_row, stage3_row
from adaptrec_prompts.programs.adaptrec import AdaptRec, example_inputs
from adaptrec_prompts.retrieval.embedders import make_embedder
from adaptrec_prompts.retrieval.index import make_client
from adaptrec_prompts.retrieval.index import open_index
from adaptrec_prompts.retrieval.neighbors import add_neighbors
from conftest import goodreads_with_neighbors

SCRIPT = Path(__file__).resolve().parents[1] / "finetune" / "sft.py"


def _sft():
    spec = importlib.util.spec_from_file_location("adaptrec_sft", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["adaptrec_sft"] = module  # dataclasses resolve their string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gr_nb(tmp_path_factory, goodreads_raw):
    return goodreads_with_neighbors(tmp_path_factory.mktemp("sft-data"), goodreads_raw, 6, ["train", "test"])[1]


class Recorder:
    """An engine that records what inference sends and answers '1'."""

    def __init__(self):
        self.sent = []

    def complete(self, request):
        from adaptrec_prompts.backends.hf import request_messages
        from dspy.lm15 import Message, Response, TextPart, Usage

        self.sent.append(request_messages(request))
        return Response(id=None, model="rec", message=Message.assistant([TextPart("[[ ## answer ## ]]\n1")]),
                        finish_reason="stop", usage=Usage(input_tokens=1, output_tokens=1, total_tokens=2))

    def stream(self, request):
        raise NotImplementedError

    def close(self):
        pass


@pytest.mark.parametrize(("selection", "prompt", "labels"), [
    ("static", "full", "numbers"), ("none", "full", "numbers"), ("random", "full", "numbers"),
    ("random-retrieved", "full", "numbers"), ("static", "compact", "numbers"), ("none", "compact", "numbers"),
    ("static", "compact", "letters"), ("none", "compact", "letters")])
def test_training_prompt_is_byte_identical_to_the_inference_prompt(ml100k, selection, prompt, labels):
    import datasets as hfds

    from conftest import with_fake_neighbors

    row = with_fake_neighbors(ml100k["train"][500], ml100k["train"].select(range(40, 60)))
    program = AdaptRec(load_template("movies"), selection=selection, n_retrieve=10, m_select=4, mode="generate",
                       prompt=prompt, demo_items=5 if prompt == "compact" else None, labels=labels)
    program.recommender.recommend.signature = program.recommender.recommend.signature.with_instructions(
        "A compiled instruction.")
    recorder = Recorder()
    with dspy.context(lm=dspy.LM("local/rec", engine=recorder, cache=False)):
        program(**example_inputs(row))
    sft_row = stage3_row(program, row)
    assert sft_row["prompt"] == recorder.sent[0]  # same messages, same bytes
    assert json.dumps(sft_row["prompt"]) == json.dumps(recorder.sent[0])
    assert "A compiled instruction." in sft_row["prompt"][0]["content"]
    if prompt == "compact":  # the instructions are the whole system message; no DSPy field boilerplate
        assert sft_row["prompt"][0]["content"] == "A compiled instruction."
        assert "Respond with the corresponding output fields" not in sft_row["prompt"][1]["content"]
        if selection == "static":  # each similar user shows their last 5 items
            assert "User 1 watched 5 movies" in sft_row["prompt"][1]["content"]
    number = row["candidate_item_ids"].index(row["target_item_id"]) + 1
    label = str(number) if labels == "numbers" else "ABCDEFGHIJKLMNOPQRST"[number - 1]
    assert sft_row["completion"] == [{"role": "assistant", "content":
                                      f"[[ ## answer ## ]]\n{label}. {row['target_title']}\n\n[[ ## completed ## ]]\n"}]
    if labels == "letters":  # the prompt lists the candidates under the same letters
        assert f"\n{label}. {row['target_title']}" in sft_row["prompt"][-1]["content"]
    assert isinstance(hfds.Dataset.from_list([{"prompt": sft_row["prompt"], "completion": sft_row["completion"]}]),
                      hfds.Dataset)


def test_stage2_label_rule():
    row = {"target_item_id": 9, "history_item_ids": [1, 2, 3],
           "neighbor_next_item_ids": [5, 9, 7, 8], "neighbor_history_item_ids": [[1, 2], [4], [9, 1], [1, 2, 3]]}
    assert stage2_label(row, n=4, m=3) == [1, 2, 3]  # next==target, target in history, most overlap


def test_stage2_rows(gr_nb):
    import datasets

    program = AdaptRec(load_template("books"), selection="adaptive", n_retrieve=6, m_select=3)
    row = datasets.load_from_disk(str(gr_nb))["train"][10]
    r = stage2_row(program, row)
    assert r["completion"][0]["content"].startswith("[[ ## selected_users ## ]]\n[")
    assert len(build_rows(program, [row], train_stage2=True)) == 2


def _args(sft, tmp_path, gr_nb, *extra):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text((Path(__file__).resolve().parents[1] / "finetune" / "configs" / "tiny-cpu.yaml").read_text())
    return sft.make_parser().parse_args_and_config([
        "--config", str(cfg), "--data", str(gr_nb), "--output_dir", str(tmp_path / "out"), "--tiny_model_size",
        "micro", "--tiny_vocab_size", "600", "--max_steps", "4", "--per_device_train_batch_size", "2",
        "--logging_steps", "1", "--learning_rate", "5e-3", *extra])


def test_tiny_lora_training_changes_the_adapter_only_and_reloads(gr_nb, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adaptrec_prompts.backends.hf import HFEngine

    sft = _sft()
    out = sft.main(*_args(sft, tmp_path, gr_nb))
    assert any("loss" in entry for entry in out["log_history"])  # a training loss was logged
    base_dir, adapter_dir = Path(out["base_model"]), tmp_path / "out"
    assert (adapter_dir / "adapter_config.json").is_file() and (adapter_dir / "adaptrec_manifest.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # LoRA B starts at zero: it moved
    base_state = base.state_dict()
    for name, param in tuned.get_base_model().named_parameters():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(param, base_state[key]), name  # base weights unchanged
    import datasets

    row = datasets.load_from_disk(str(gr_nb))["test"][0]
    r = stage3_row(AdaptRec(load_template("books"), selection="static", n_retrieve=10, m_select=5), row)
    comps = ["[[ ## answer ## ]]\n1", "[[ ## answer ## ]]\n2"]
    a = HFEngine.load(base_dir, adapter=adapter_dir).score(r["prompt"], comps)
    b = HFEngine.load(base_dir, adapter=adapter_dir).score(r["prompt"], comps)
    c = HFEngine.load(base_dir).score(r["prompt"], comps)
    np.testing.assert_allclose(a, b, atol=1e-6)  # the adapter reloads to identical logits
    assert not np.allclose(a, c, atol=1e-4)


@pytest.mark.parametrize("labels", ["numbers", "letters"])
def test_self_adaptive_callback_reselects_with_the_model(gr_nb, tmp_path, labels):
    sft = _sft()  # letters: a signature built at run time (datasets cannot pickle it to fingerprint the stream)
    out = sft.main(*_args(sft, tmp_path, gr_nb, "--selection", "adaptive", "--selection_refresh_steps", "2",
                          "--selection_refresh_window", "5", "--m_select", "3", "--n_retrieve", "6",
                          "--labels", labels))
    assert out["program"].get("labels", "numbers") == labels
    history = out["selection_history"]
    assert [h["step"] for h in history] == [2, 4]
    assert all(h["reselected"] == 5 for h in history)  # what a refresh does: the test below
    assert any("loss" in entry for entry in out["log_history"])


def test_adaptive_training_refuses_dataloader_workers(gr_nb, tmp_path):
    sft = _sft()  # a worker would render rows with its own, never refreshed, copy of the selections
    with pytest.raises(ConfigError, match="dataloader_num_workers=2.*use 0"):
        sft.main(*_args(sft, tmp_path, gr_nb, "--selection", "adaptive", "--dataloader_num_workers", "2"))
    assert not (tmp_path / "out").exists()  # refused before any model was built


def test_a_refresh_reselects_with_the_model_and_the_next_rows_show_it(ml100k, tiny_model):
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conftest import with_fake_neighbors

    sft = _sft()
    train = ml100k["train"]
    rows = [with_fake_neighbors(train[500 + i], train.select(range(40 + 10 * i, 60 + 10 * i)), n=8)
            for i in range(6)]
    program = AdaptRec(load_template("movies"), selection="adaptive", n_retrieve=8, m_select=3)
    adaptive = sft.SelfAdaptiveSelection(program, rows, refresh_steps=2, window=4, seed=0)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model)
    before = dict(adaptive.indices)
    assert set(map(tuple, before.values())) == {(0, 1, 2)}  # adaptive starts from embedding order
    stream = adaptive.stream(lambda row: row)
    next(stream)  # the trainer consumed the first row, then a step ended
    upcoming = [rows[adaptive.order[1 + k]] for k in range(4)]
    expected = {r["example_id"]: adaptive.select_with_model(model, tokenizer, r) for r in upcoming}
    adaptive.on_step_end(None, SimpleNamespace(global_step=2), None, model=model, processing_class=tokenizer)
    changed = sum(expected[e] != before[e] for e in expected)
    assert adaptive.history == [{"step": 2, "reselected": 4, "changed": changed}] and changed > 0
    for row in upcoming:  # the rows rendered next carry the model's selection, not the old one
        rendered = next(stream)
        assert rendered["example_id"] == row["example_id"]
        assert rendered == stage3_row(program, row, expected[row["example_id"]])
        if expected[row["example_id"]] != before[row["example_id"]]:
            assert rendered != stage3_row(program, row, before[row["example_id"]])


def test_unknown_yaml_keys_are_fatal(tmp_path):
    sft = _sft()
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("data: x\nbf16: false\nlearning_rte: 0.1\n")
    with pytest.raises(ValueError, match="learning_rte"):
        sft.make_parser().parse_args_and_config(["--config", str(cfg), "--output_dir", str(tmp_path)])


@pytest.mark.parametrize("config", sorted((Path(__file__).resolve().parents[1] / "finetune" / "configs").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_every_shipped_config_parses(config, tmp_path):
    sft = _sft()
    import yaml

    # bf16 is refused on a machine without a GPU: override it here, read the file's value below
    script, training, model = sft.make_parser().parse_args_and_config(
        ["--config", str(config), "--data", "x", "--output_dir", str(tmp_path), "--bf16", "false"])
    assert model.use_peft and training.learning_rate > 0  # and no unknown key (those are fatal)
    if config.stem.startswith("gemma-270m"):  # the preset prompts the base model in plain text: so must training
        assert (script.prompt_format, model.model_name_or_path) == ("plain", "gemma-3-270m")
        assert yaml.safe_load(config.read_text())["bf16"] is True


def test_plain_prompt_training_tokenizes_like_the_plain_engine(gr_nb, tmp_path):
    import datasets
    from transformers import AutoTokenizer

    from adaptrec_prompts.backends.hf import HFEngine

    sft = _sft()
    out = sft.main(*_args(sft, tmp_path, gr_nb, "--prompt_format", "plain", "--max_steps", "2"))
    assert any("loss" in entry for entry in out["log_history"])
    base = Path(out["base_model"])
    engine = HFEngine.load(base, prompt_format="plain")
    tokenize = sft._tokenizer_fn(engine.model, AutoTokenizer.from_pretrained(base), "plain")
    row = stage3_row(AdaptRec(load_template("books"), selection="static", n_retrieve=10, m_select=5),
                     datasets.load_from_disk(str(gr_nb))["train"][10])
    ids = tokenize(row)
    prompt = engine.prompt_ids(row["prompt"])
    assert ids["input_ids"][: len(prompt)] == prompt and set(ids["labels"][: len(prompt)]) == {-100}
    assert engine.render(row["prompt"]).endswith("\n\n") and "<|im_start|>" not in engine.render(row["prompt"])


def test_a_train_sample_of_neighbours_is_what_sft_trains_on(goodreads_raw, tmp_path):
    import datasets

    from adaptrec_prompts.retrieval.index import pool_rows

    data = save(*build("goodreads", goodreads_raw, ProtocolConfig(k_candidates=10)), tmp_path / "gr")
    emb = make_embedder("collab", data)
    section = add_neighbors(data, tmp_path / "nb", open_index(data, emb, make_client(path=tmp_path / "chroma")), emb,
                            n=4, splits=["train"], train_sample=30, train_sample_seed=2)
    assert section["splits"]["train"]["sample"] == {"rows": 30, "seed": 2}
    train = datasets.load_from_disk(str(tmp_path / "nb"))["train"]
    chosen = set(pool_rows(train.num_rows, 30, 2))
    lists = train["neighbor_example_ids"]
    assert all(not ids for i, ids in enumerate(lists) if i not in chosen)  # unqueried rows: no neighbours
    assert sum(bool(lists[i]) for i in chosen) >= 20
    sft = _sft()
    out = sft.main(*_args(sft, tmp_path, tmp_path / "nb", "--max_steps", "1"))
    assert out["train_rows"] == 30


def test_answer_only_logits_trainer_has_trls_loss_and_trains(gr_nb, tmp_path):
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from adaptrec_prompts.backends.tiny import build_tiny_llama
    from adaptrec_prompts.finetune.losses import answer_only_trainer, tokenize_fn

    program = AdaptRec(load_template("books"), selection="static", n_retrieve=6, m_select=3)
    train = datasets.load_from_disk(str(gr_nb))["train"]
    rows = [stage3_row(program, r) for r in train if r["neighbor_example_ids"]][:6]
    base = build_tiny_llama(["\n\n".join(m["content"] for m in r["prompt"] + r["completion"]) for r in rows],
                            tmp_path / "base", size="micro", vocab_size=600, chat_template=True)
    tokenizer = AutoTokenizer.from_pretrained(base)
    losses, trained = {}, {}
    for name, cls in (("default", SFTTrainer), ("fast", answer_only_trainer())):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(base)
        encoded = [tokenize_fn(model, tokenizer)(r) for r in rows]
        args = SFTConfig(output_dir=str(tmp_path / name), per_device_train_batch_size=2, max_steps=3,
                         learning_rate=5e-3, logging_steps=1, save_strategy="no", report_to="none", seed=0,
                         bf16=False, dataset_kwargs={"skip_prepare_dataset": True}, max_length=None)
        trainer = cls(model=model, args=args, train_dataset=datasets.Dataset.from_list(encoded),
                      processing_class=tokenizer, peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                                         target_modules="all-linear"))
        batch = trainer.data_collator(encoded[:2])  # two rows of different lengths: padding and the union of positions
        trainer.model.train()
        losses[name] = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=None).item()
        trainer.train()
        trained[name] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert abs(losses["default"] - losses["fast"]) < 1e-4
    np.testing.assert_allclose(trained["fast"], trained["default"], rtol=1e-3)  # same optimisation path


def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_adapter(gr_nb, tmp_path):
    from safetensors.torch import load_file

    sft = _sft()
    fixed = ["--lr_scheduler_type", "constant", "--warmup_steps", "0", "--save_strategy", "steps", "--save_steps", "2"]
    (tmp_path / "whole").mkdir()
    whole = sft.main(*_args(sft, tmp_path / "whole", gr_nb, *fixed))
    (tmp_path / "cut").mkdir()
    first = sft.main(*_args(sft, tmp_path / "cut", gr_nb, *fixed, "--max_steps", "2"))  # stopped after step 2
    assert whole["steps"] == 4 and first["steps"] == 2 and first["resumed_from"] is None
    resumed = sft.main(*_args(sft, tmp_path / "cut", gr_nb, *fixed))  # the same command again: continues
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["steps"] == 4
    assert [e["step"] for e in resumed["log_history"] if "loss" in e] == [1, 2, 3, 4]
    a = load_file(tmp_path / "whole" / "out" / "adapter_model.safetensors")
    b = load_file(tmp_path / "cut" / "out" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert (tmp_path / "cut" / "out" / "loss.png").stat().st_size > 0


def test_balanced_sample_spreads_target_positions():
    from adaptrec_prompts.finetune.experiment import balanced_sample

    rows = [{"example_id": f"e{i}", "target_item_id": 7, "candidate_item_ids": [7, 1, 2, 3] if i % 4 == 0 else
             [1, 2, 3, 7]} for i in range(40)]  # target at position 1 in 10 rows, at position 4 in 30
    ids = balanced_sample(rows, 16, seed=0)
    first = sum(1 for e in ids if int(e[1:]) % 4 == 0)
    assert len(set(ids)) == 16 and first == 8  # half and half, though the pool is 1:3
    assert balanced_sample(rows, 16, seed=0) == ids and balanced_sample(rows, 16, seed=1) != ids


def test_sft_experiment_trains_each_variant_on_the_same_rows_and_resumes(gr_nb, tmp_path):
    import datasets

    from adaptrec_prompts.finetune.experiment import SFTExperiment, run

    config = SFTExperiment(data=str(gr_nb), out=str(tmp_path / "exp"), model="tiny", train_rows=8, epochs=0.5,
                           batch_size=2, grad_accum=1, learning_rate=5e-3, lora_r=4, n=6, m=3, refresh_steps=1,
                           refresh_window=2, limit=4, checkpoint_minutes=0)
    report = run(config, "test")
    manifests = {v: json.loads((tmp_path / "exp" / "train" / v / "adaptrec_manifest.json").read_text())
                 for v in ("none", "static", "adaptive")}
    assert {m["train_rows_sha256"] for m in manifests.values()} == {manifests["none"]["train_rows_sha256"]}
    assert {m["steps"] for m in manifests.values()} == {2} and manifests["adaptive"]["selection_history"]
    text = (report / "table.md").read_text()
    for name in ("popularity", "userknn", "sasrec", "untuned-zero-shot", "untuned-static", "tuned-zero-shot", "tuned-static",
                 "tuned-adaptive"):
        assert f"| {name} |" in text
    claims = json.loads((report / "claims.json").read_text())
    assert {c["claim"] for c in claims} >= {"fine-tuned AdaptRec beats fine-tuned zero-shot", "tuned-static vs SASRec"}
    tested = min(4, datasets.load_from_disk(str(gr_nb))["test"].num_rows)
    assert tested >= 2 and all(c["n"] == tested for c in claims)  # every claim paired on all evaluated rows
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "exp").rglob("*.jsonl")}
    run(config, "test")  # resumes: no example re-run (SASRec retrains in other seconds: not a different run)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "exp").rglob("*.jsonl")} == before
    assert json.loads((tmp_path / "exp" / "train" / "none" / "adaptrec_manifest.json").read_text()) == manifests["none"]


# ---- the choice: title answers, the listwise loss, choice diagnostics (docs/design.md, Fine-tuning objectives) ----

@pytest.fixture(scope="module")
def gr_valid(tmp_path_factory, goodreads_raw):
    """The GoodReads fixture with neighbours for train and valid (diagnostics score validation rows)."""
    return goodreads_with_neighbors(tmp_path_factory.mktemp("sft-valid"), goodreads_raw, 6, ["train", "valid"])[1]


@pytest.mark.parametrize("labels", ["titles", "letters"])
def test_listwise_rows_are_the_inference_prompt_and_score_mode_completions(ml100k, labels):
    from conftest import with_fake_neighbors

    from adaptrec_prompts.finetune.rows import listwise_row

    row = with_fake_neighbors(ml100k["train"][500], ml100k["train"].select(range(40, 60)))
    program = AdaptRec(load_template("movies"), selection="static", m_select=4, mode="score", prompt="compact",
                       demo_items=5, labels=labels)
    item = listwise_row(program, row)
    assert item["prompt"] == stage3_row(program, row)["prompt"]
    rec = program.recommender
    assert item["candidates"] == rec.completions(rec.adapter(), row["candidate_titles"])
    target = row["candidate_item_ids"].index(row["target_item_id"])
    assert item["target_index"] == target
    expected = row["target_title"] if labels == "titles" else f"{chr(65 + target)}. {row['target_title']}"
    assert item["candidates"][target] == f"[[ ## answer ## ]]\n{expected}\n"
    assert stage3_row(program, row)["completion"][0]["content"].startswith(f"[[ ## answer ## ]]\n{expected}\n")


def test_candidate_log_likelihoods_are_score_modes_scores_with_gradients(ml100k, tiny_model):
    from conftest import with_fake_neighbors
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaptrec_prompts.backends.hf import HFEngine
    from adaptrec_prompts.finetune.losses import candidate_log_likelihoods
    from adaptrec_prompts.finetune.rows import listwise_row

    row = with_fake_neighbors(ml100k["test"][3], ml100k["train"].select(range(40, 60)))
    program = AdaptRec(load_template("movies"), selection="static", m_select=3, mode="score", prompt="compact",
                       demo_items=3, labels="titles")
    item = listwise_row(program, row)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model)
    engine = HFEngine(model, tokenizer)
    reference = np.array(engine.score(item["prompt"], item["candidates"]))
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in item["candidates"]]
    scores = candidate_log_likelihoods(model, engine.prompt_ids(item["prompt"]), ids)
    got = scores.detach().numpy()
    # the shared answer header is left out: a constant shift, the same ranking and choice distribution
    np.testing.assert_allclose(got - got.max(), reference - reference.max(), atol=1e-4)
    scores.logsumexp(0).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_listwise_training_with_title_answers_learns_its_rows_and_records_the_choice(gr_valid, tmp_path):
    import datasets

    sft = _sft()
    out = sft.main(*_args(sft, tmp_path, gr_valid, "--labels", "titles", "--loss", "listwise", "--m_select", "3",
                          "--n_retrieve", "6", "--max_train_examples", "10", "--max_steps", "8",
                          "--learning_rate", "2e-2", "--lr_scheduler_type", "constant", "--warmup_steps", "0",
                          "--diagnostics_rows", "3", "--diagnostics_train_rows", "4", "--diagnostics_steps", "4"))
    assert out["program"]["labels"] == "titles"
    records = out["choice_diagnostics"]
    assert [(r["step"], r["slice"]) for r in records] == [(s, sl) for s in (0, 4, 8) for sl in ("train", "valid")]
    train = {r["step"]: r for r in records if r["slice"] == "train"}
    assert train[8]["choice_nll"] < train[0]["choice_nll"] - 0.1  # the choice on its own rows was learned
    assert all(r["n_target_shown"] + r["n_target_not_shown"] == r["n"] for r in records)
    lines = (tmp_path / "out" / "choice_diagnostics.jsonl").read_text().splitlines()
    assert sorted((json.loads(line) for line in lines), key=lambda r: (r["step"], r["slice"])) == records
    assert (tmp_path / "out" / "loss.png").stat().st_size > 0
    assert all(np.isfinite(e["loss"]) for e in out["log_history"] if "loss" in e)

    from adaptrec_prompts.evaluation.baselines.demo_match import DemoMatchBaseline
    from adaptrec_prompts.evaluation.report import choice_report
    from adaptrec_prompts.retrieval.embedders import training_sequences

    report = choice_report([tmp_path / "out"], tmp_path / "rep", "objectives")
    saved = json.loads((report / "choice.json").read_text())
    valid = datasets.load_from_disk(str(gr_valid))
    floor = DemoMatchBaseline(training_sequences(valid["train"]), n_retrieve=6, m_select=3)
    rows = valid["valid"].select(range(min(3, valid["valid"].num_rows))).to_list()
    assert saved["rows"] == len(rows) == next(r["n"] for r in records if r["slice"] == "valid")
    assert saved["floor_hr1"] == sum(floor.predict_row(r)["ranking"][0] == r["target_item_id"] for r in rows) / len(rows)
    text = (report / "table.md").read_text()
    assert text.count("| out | titles | listwise |") == len(records) and (report / "choice.png").stat().st_size > 0
    assert "| 16 | train (4) |" in text  # 8 steps of 2 rows


def test_adaptive_listwise_training_runs_through_the_live_stream(gr_valid, tmp_path):
    sft = _sft()
    out = sft.main(*_args(sft, tmp_path, gr_valid, "--selection", "adaptive", "--loss", "listwise", "--labels",
                          "letters", "--m_select", "3", "--n_retrieve", "6", "--selection_refresh_steps", "2",
                          "--selection_refresh_window", "3", "--diagnostics_rows", "2"))
    assert [h["step"] for h in out["selection_history"]] == [2, 4]
    assert all(np.isfinite(e["loss"]) for e in out["log_history"] if "loss" in e)
    assert [r["step"] for r in out["choice_diagnostics"]] == [0, 4]  # scored with the model's own selection


def test_the_listwise_scores_need_the_prompts_cache(ml100k, tiny_model):
    # activation checkpointing drops the KV cache in training mode: the answers would be scored without the
    # prompt; TRL's config turns it on by default, and the listwise trainer turns it off (the test above)
    from transformers import AutoModelForCausalLM

    from adaptrec_prompts.finetune.losses import candidate_log_likelihoods

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.gradient_checkpointing_enable()
    model.train()
    with pytest.raises(RuntimeError, match="KV cache was not filled"):
        candidate_log_likelihoods(model, [1, 2, 3, 4], [[5, 6, 7], [5, 8, 9]])


def test_choice_diagnostics_refuse_records_of_other_rows(tmp_path):
    from adaptrec_prompts.finetune.callbacks import ChoiceDiagnostics

    rows = [{"example_id": "a", "candidate_item_ids": [1, 2]}, {"example_id": "b", "candidate_item_ids": [1, 2]}]
    ChoiceDiagnostics(None, {"valid": rows}, {}, tmp_path / "d.jsonl", 0, identity={"loss": "answer"})
    (tmp_path / "d.jsonl").write_text(json.dumps({"step": 0, "slice": "valid", "n": 2}) + "\n")
    again = ChoiceDiagnostics(None, {"valid": rows}, {}, tmp_path / "d.jsonl", 0, identity={"loss": "answer"})
    assert again.records == [{"step": 0, "slice": "valid", "n": 2}]  # a resumed run keeps its records
    for slices, identity in (({"valid": rows[:1]}, {"loss": "answer"}), ({"valid": rows}, {"loss": "listwise"})):
        with pytest.raises(ConfigError, match="other rows or settings"):
            ChoiceDiagnostics(None, slices, {}, tmp_path / "d.jsonl", 0, identity=identity)
    assert (tmp_path / "d.jsonl").read_text().count("\n") == 1  # never overwritten


def test_a_checkpoint_is_not_resumed_under_another_objective(gr_valid, tmp_path):
    sft = _sft()
    sft.main(*_args(sft, tmp_path, gr_valid, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2"))
    with pytest.raises(ConfigError, match="continues only the run it belongs to"):
        sft.main(*_args(sft, tmp_path, gr_valid, "--loss", "listwise"))


def test_choice_diagnostics_refuse_the_test_split_and_unknown_losses(gr_valid, tmp_path):
    sft = _sft()
    for split in ("test", "test_extended", "train"):
        with pytest.raises(ConfigError, match="validation rows only"):
            sft.main(*_args(sft, tmp_path, gr_valid, "--diagnostics_rows", "2", "--diagnostics_split", split))
    with pytest.raises(ConfigError, match="diagnostics_steps=-1"):
        sft.main(*_args(sft, tmp_path, gr_valid, "--diagnostics_rows", "2", "--diagnostics_steps", "-1"))
    with pytest.raises(ConfigError, match="loss='pairwise'"):
        sft.main(*_args(sft, tmp_path, gr_valid, "--loss", "pairwise"))
    assert not (tmp_path / "out").exists()


def test_sft_experiment_with_title_answers_reports_the_floor_and_the_choice(gr_valid, tmp_path):
    import datasets

    from adaptrec_prompts.finetune.experiment import SFTExperiment, run

    config = SFTExperiment(data=str(gr_valid), out=str(tmp_path / "exp"), model="tiny", variants=("none", "static"),
                           train_rows=6, epochs=1.0, batch_size=2, grad_accum=1, learning_rate=5e-3, lora_r=4, n=6, m=3,
                           labels="titles", loss="listwise", diagnostics_rows=2, diagnostics_train_rows=2,
                           diagnostics_steps=2, split="valid", limit=4, checkpoint_minutes=0)
    report = run(config, "test")
    text = (report / "table.md").read_text()
    assert "| demo-match | baseline:demo-match |" in text and "tuned-static vs demo-match" in text
    assert "#### Does the model read the demonstrations?" in text and "HR@1, target shown" in text
    exposure = json.loads((report / "exposure.json").read_text())
    valid = datasets.load_from_disk(str(gr_valid))["valid"].num_rows
    assert exposure["rows"] == min(4, valid) >= 2 and {r["run"] for r in exposure["runs"]} >= {"demo-match", "tuned-static"}
    assert all(r["n_shown"] + r["n_not_shown"] == exposure["rows"] for r in exposure["runs"])
    assert "#### Is the choice learned?" in text
    for variant in ("none", "static"):
        records = [json.loads(line) for line in
                   (tmp_path / "exp" / "train" / variant / "choice_diagnostics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if r["slice"] == "valid"] == [0, 2, 3]
        assert f"| {variant} | 6 | valid (2) |" in text  # 3 steps of 2 rows: rows seen at the end
    changed = SFTExperiment(**{**config.__dict__, "loss": "answer"})
    with pytest.raises(ConfigError, match="'loss': 'listwise'"):  # an adapter is not reused for another objective
        run(changed, "test")
