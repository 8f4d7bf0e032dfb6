"""`--device` wherever a local model runs: one option (same values, same check), refused early with the flag
named when misspelt or when torch cannot see the GPU, and passed through to the model. No GPU here: the
CPU path and the error paths are tested; a GPU is faked only where the check itself is the subject."""

import json

import pytest
import torch

from adaptrec_prompts.cli.app import main, make_parser
from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.evaluation.runs import RunConfig
from adaptrec_prompts.experiments.experiment import Experiment
from adaptrec_prompts.finetune.experiment import SFTExperiment
from adaptrec_prompts.utils.devices import check_device, resolve_device, trainer_use_cpu
from conftest import goodreads_with_neighbors

# every command that runs a local model, with just enough arguments to get past argparse
COMMANDS = {
    "eval": ["eval", "--data", "d", "--out", "o"],
    "experiment": ["experiment", "--data", "d", "--lm", "hf:m", "--out", "o"],
    "sft-experiment": ["sft-experiment", "--data", "d", "--out", "o"],
    "pipeline": ["pipeline"],
    "compile": ["compile", "--data", "d", "--lm", "hf:m"],
    "index build": ["index", "build", "--data", "d"],
    "index neighbors": ["index", "neighbors", "--data", "d", "--out", "o"],
    "bench modes": ["bench", "modes", "--data", "d"],
    "bench sft": ["bench", "sft", "--data", "d"],
}
NO_GPU = not torch.cuda.is_available()


def _command(words):
    parser = make_parser()
    for word in words:
        parser = next(a for a in parser._actions if a.dest in ("group", "command")).choices[word]
    return parser


@pytest.mark.parametrize("name", COMMANDS)
def test_every_local_model_command_has_the_same_device_option(name):
    action = next(a for a in _command(name.split())._actions if a.dest == "device")
    reference = next(a for a in _command(["eval"])._actions if a.dest == "device")
    assert (action.default, action.type, action.option_strings) == ("cpu", reference.type, ["--device"])


@pytest.mark.parametrize("name", COMMANDS)
def test_a_misspelt_device_is_refused_before_anything_runs(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written, wherever a default output folder points
    with pytest.raises(SystemExit) as exit_:
        main([*COMMANDS[name], "--device", "gpu"])
    assert exit_.value.code == 2
    assert "argument --device: 'gpu' is not a device; use cpu, cuda, cuda:N" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["cpu", "cuda", "cuda:0", "cuda:12", "mps", "auto"])
def test_the_device_names(value):
    assert check_device(value) == value


def test_the_library_configs_name_the_wrong_field():
    with pytest.raises(ConfigError, match=r"RunConfig.device='gpu' is not valid; use cpu, cuda, cuda:N"):
        RunConfig(data="d", out="o", device="gpu")
    with pytest.raises(ConfigError, match=r"Experiment.device='cuda1' is not valid"):
        Experiment(data="d", lm="hf:m", out="o", device="cuda1")
    with pytest.raises(ConfigError, match=r"SFTExperiment.device='CPU' is not valid"):
        SFTExperiment(data="d", out="o", device="CPU")
    with pytest.raises(ConfigError, match=r"--device: 'gpu' is not a device"):
        check_device("gpu")


@pytest.mark.skipif(not NO_GPU, reason="checks the message for a machine without CUDA")
def test_a_gpu_torch_cannot_see_is_refused_naming_the_flag(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"no CUDA device here .*use --device cpu or --device auto"):
        resolve_device("cuda:1")
    assert resolve_device("auto") == "cpu" and trainer_use_cpu("auto") is True
    # sft-experiment: refused before the sample, the base model or any training
    assert main(["sft-experiment", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "exp"),
                 "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err and not (tmp_path / "exp").exists()
    # pipeline: refused before the data is prepared or any neighbour is written
    assert main(["pipeline", "--out", str(tmp_path / "main"), "--lm", "hf:m", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err and not (tmp_path / "main").exists()


def test_training_refuses_a_gpu_the_trainer_would_not_use(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert trainer_use_cpu("cuda") is False and trainer_use_cpu("cuda:0") is False and trainer_use_cpu("cpu")
    with pytest.raises(ConfigError, match=r"--device cuda:1: training .* CUDA_VISIBLE_DEVICES=1 and use --device cuda"):
        trainer_use_cpu("cuda:1")
    with pytest.raises(ConfigError, match=r"--device cuda:2: torch sees 2 CUDA device\(s\) here \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")


@pytest.fixture(scope="module")
def gr_data(tmp_path_factory, goodreads_raw):
    return goodreads_with_neighbors(tmp_path_factory.mktemp("devices"), goodreads_raw, 6, ["train", "test_extended"])


def test_the_experiment_device_reaches_the_model_and_the_manifests(gr_data, tiny_model, tmp_path, monkeypatch):
    from adaptrec_prompts.backends.hf import HFEngine

    loaded = []
    load = HFEngine.load.__func__
    monkeypatch.setattr(HFEngine, "load", classmethod(lambda cls, *a, **k: loaded.append(k["device"]) or
                                                      load(cls, *a, **k)))
    _, nb = gr_data
    out = tmp_path / "exp"
    assert main(["experiment", "--data", str(nb), "--lm", f"hf:{tiny_model}", "--out", str(out), "--split",
                 "test_extended", "--limit", "1", "--chunk", "1", "--variants", "none", "--m-values", "", "--n", "6",
                 "--device", "auto", "--no-progress"]) == 0
    assert loaded == ["auto"]  # one model for every variant, on the device asked for (auto: the CPU here)
    zero_shot = json.loads((out / "zero-shot" / "manifest.json").read_text())
    assert zero_shot["config"]["device"] == "auto" and zero_shot["run_config"]["device"] == "auto"
    baseline = json.loads((out / "popularity" / "manifest.json").read_text())
    assert "device" not in baseline["config"]  # no model, nothing to record (and the run identity unchanged)
    assert json.loads((out / "experiment.json").read_text())["config"]["device"] == "auto"


def test_finetune_script_device_sets_use_cpu_and_is_recorded(gr_data, tmp_path):
    from test_sft import _args, _sft

    sft = _sft()
    _, nb = gr_data
    script, training, model = _args(sft, tmp_path, nb, "--use_cpu", "false", "--device", "cpu", "--max_steps", "1")
    assert (script.device, training.use_cpu) == ("cpu", False)
    out = sft.main(script, training, model)
    assert out["config"]["script"]["device"] == "cpu" and out["config"]["training"]["use_cpu"] is True
    if NO_GPU:
        script, training, model = _args(sft, tmp_path, nb, "--device", "cuda")
        with pytest.raises(ConfigError, match="no CUDA device"):
            sft.main(script, training, model)
