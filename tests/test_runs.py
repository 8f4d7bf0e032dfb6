"""`run_eval(RunConfig)`, the library call behind `adaptrec eval`, and `--config FILE` (YAML) on the commands."""

import json

import pytest

from adaptrec_prompts.cli.app import main, make_parser
from adaptrec_prompts.errors import ConfigError, IncompleteRunError
from adaptrec_prompts.evaluation.results import read_log
from adaptrec_prompts.evaluation.results import Results
from adaptrec_prompts.evaluation.runs import RunConfig, config_fields, run_eval


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def _rankings(folder):
    return {k: (r["ranking"], r["hit1"]) for k, r in read_log(folder / "predictions.jsonl").items()}


def _subparser(name):
    groups = next(a for a in make_parser()._actions if a.dest == "group")
    return groups.choices[name]


def test_the_eval_options_are_the_run_config_fields():
    dests = {a.dest for a in _subparser("eval")._actions} - {"help", "config", "no_progress"}
    assert dests == set(config_fields())


def test_run_eval_is_adaptrec_eval(ml100k_prepared, tmp_path, capsys):
    results = run_eval(RunConfig(data=ml100k_prepared, out=tmp_path / "lib", program="baseline:popularity", limit=20),
                       progress=False)
    assert main(["eval", "--data", str(ml100k_prepared), "--program", "baseline:popularity", "--limit", "20",
                 "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'cli'}: n=20 errors=0 HR@1=")
    lib, cli = _manifest(tmp_path / "lib"), _manifest(tmp_path / "cli")
    assert lib["config"] == cli["config"] and lib["run_config"] == cli["run_config"]
    assert lib["run_config"]["program"] == "baseline:popularity" and "out" not in lib["run_config"]
    assert _rankings(tmp_path / "lib") == _rankings(tmp_path / "cli")
    # Results: the metrics, the rows, and still the results.json dict
    assert (results.n, results.errors, results.path) == (20, 0, tmp_path / "lib")
    assert results.metrics == json.loads((tmp_path / "lib" / "results.json").read_text())["metrics"]
    assert results["n"] == 20 and results.raw["metrics"] is results.metrics and dict(results) == results.raw
    frame = results.to_pandas()
    assert len(frame) == 20 and {"example_id", "ranking", "hit1", "error"} <= set(frame.columns)
    assert frame["hit1"].mean() == pytest.approx(results.metrics["HR@1"]["value"])
    assert len(Results.load(tmp_path / "lib").to_pandas()) == 20


def test_a_run_config_says_which_field_is_wrong():
    with pytest.raises(ConfigError, match=r"RunConfig.split='nope' is not valid; use one of train, valid, test"):
        RunConfig(data="d", out="o", split="nope")
    with pytest.raises(ConfigError, match=r"RunConfig.mode='fast' is not valid; use one of generate, score"):
        RunConfig(data="d", out="o", mode="fast")
    with pytest.raises(ConfigError, match=r"RunConfig.limit must be >= 1, got 0"):
        RunConfig(data="d", out="o", limit=0)


def test_run_eval_needs_an_lm_name_for_llm_programs(ml100k_prepared, tmp_path):
    with pytest.raises(ConfigError, match="this program needs an LM: pass --lm"):
        run_eval(RunConfig(data=ml100k_prepared, out=tmp_path / "x", program="none"), lm=object(), progress=False)
    assert not (tmp_path / "x").exists()


def test_an_incomplete_run_raises_with_what_was_scored(ml100k_prepared, tmp_path, monkeypatch):
    from adaptrec_prompts.utils.testing import MockOpenAIServer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    with MockOpenAIServer(lambda number, body: ("500", None)) as server:
        config = RunConfig(data=ml100k_prepared, out=tmp_path / "run", program="none", lm="openai/mock",
                           api_base=server.url, mode="generate", limit=2, retries=0, num_retries=0)
        with pytest.raises(IncompleteRunError, match="2 of 2 examples failed") as caught:
            run_eval(config, progress=False)
    assert caught.value.results.errors == 2 and caught.value.results.n == 0
    assert caught.value.results.to_pandas()["error"].notna().all()


def _yaml(path, text):
    path.write_text(text)
    return str(path)


def test_a_yaml_run_equals_the_flag_run(ml100k_prepared, tmp_path):
    flags = ["--data", str(ml100k_prepared), "--program", "baseline:popularity", "--limit", "15", "--seed", "3",
             "--max-new-tokens", "32"]
    assert main(["eval", *flags, "--out", str(tmp_path / "flags"), "--no-progress"]) == 0
    config = _yaml(tmp_path / "run.yaml", f"data: {ml100k_prepared}\nprogram: baseline:popularity\nlimit: 15\n"
                   f"seed: 3\nmax-new-tokens: 32\nno_progress: true\nout: {tmp_path / 'yaml'}\nadapter: null\n")
    assert main(["eval", "--config", config]) == 0
    by_flags, by_yaml = _manifest(tmp_path / "flags"), _manifest(tmp_path / "yaml")
    assert by_yaml["config"] == by_flags["config"] and by_yaml["run_config"] == by_flags["run_config"]
    assert by_yaml["run_config"]["seed"] == 3 and by_yaml["run_config"]["max_new_tokens"] == 32
    assert (by_yaml["config_file"], by_flags["config_file"]) == (config, None)
    assert _rankings(tmp_path / "yaml") == _rankings(tmp_path / "flags")
    assert by_yaml["config_hash"] == by_flags["config_hash"]


def test_a_command_line_flag_overrides_the_file(ml100k_prepared, tmp_path):
    config = _yaml(tmp_path / "run.yaml", f"data: {ml100k_prepared}\nprogram: baseline:random\nlimit: 30\n"
                   f"out: {tmp_path / 'run'}\n")
    assert main(["eval", "--limit", "4", "--config", config, "--no-progress"]) == 0
    manifest = _manifest(tmp_path / "run")
    assert manifest["config"]["limit"] == 4 and manifest["run_config"]["limit"] == 4
    assert len(read_log(tmp_path / "run" / "predictions.jsonl")) == 4
    assert manifest["run_config"]["program"] == "baseline:random"  # the rest still from the file


@pytest.mark.parametrize(("text", "message"), [
    ("limt: 5\n", "run.yaml: unknown key 'limt'; valid keys: adapter, api-base, data, demo-items, device, labels, "
                  "limit, lm, m, max-new-tokens, mode, n, no-progress, num-retries, out, program, prompt, retries, "
                  "seed, split, template, threads, timeout"),
    ("limit: -1\n", "run.yaml: limit: must be >= 1, got -1"),
    ("split: nope\n", "run.yaml: split: 'nope' is not one of train, valid, test, test_extended"),
    ("no_progress: 1\n", "run.yaml: no_progress: a flag takes true or false, got 1"),
    ("lm: on\n", "run.yaml: lm: got the boolean True; quote the value if you mean text"),
    ("m: [1, 2]\n", "run.yaml: m: expected one value as on the command line"),
    ("- data\n", "run.yaml: expected a mapping of option names to values"),
    ("data: [unclosed\n", "run.yaml: not valid YAML"),
])
def test_a_bad_config_file_is_an_error_that_names_the_file_and_the_key(tmp_path, capsys, text, message):
    config = _yaml(tmp_path / "run.yaml", text)
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--config", config, "--data", "d", "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_missing_config_file_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--config", str(tmp_path / "nope.yaml")])
    assert f"--config {tmp_path / 'nope.yaml'}: no such file" in capsys.readouterr().err


def test_an_experiment_reads_its_options_from_a_file(ml100k_prepared, tmp_path, capsys):
    # required --data/--lm/--out come from the file; the experiment then checks the data (no neighbours here)
    config = _yaml(tmp_path / "exp.yaml", f"data: {ml100k_prepared}\nlm: hf:unused\nout: {tmp_path / 'exp'}\n"
                   "m_values: '1,3'\nchunk: 5\n")
    assert main(["experiment", "--config", config]) == 2
    assert f"{ml100k_prepared} has no neighbour columns" in capsys.readouterr().err
    bad = _yaml(tmp_path / "bad.yaml", "variants: none\nthreads: 2\n")
    with pytest.raises(SystemExit):
        main(["experiment", "--config", bad])
    assert "bad.yaml: unknown key 'threads'; valid keys: chunk, data, device, embed-model, embedders" in (
        capsys.readouterr().err)


def test_an_sft_experiment_reads_its_options_from_a_file(tmp_path, capsys):
    # the run stops at the data (no prepared folder here), after writing what it was asked: experiment.json
    missing = tmp_path / "no-data"
    flags = ["--data", str(missing), "--model", "tiny", "--variants", "none,static", "--train-rows", "12",
             "--lora-r", "4", "--demo-items", "3", "--gradient-checkpointing", "--no-progress"]
    assert main(["sft-experiment", *flags, "--out", str(tmp_path / "flags")]) == 2
    config = _yaml(tmp_path / "exp.yaml", f"data: {missing}\nout: {tmp_path / 'yaml'}\nmodel: tiny\n"
                   "variants: none,static\ntrain_rows: 40\nlora-r: 4\ndemo_items: 3\n"
                   "gradient_checkpointing: true\nno_progress: true\n")
    assert main(["sft-experiment", "--config", config, "--train-rows", "12"]) == 2  # the flag wins
    assert "is not a prepared folder" in capsys.readouterr().err
    by_flags, by_yaml = (json.loads((tmp_path / name / "experiment.json").read_text()) for name in ("flags", "yaml"))
    assert {**by_yaml["config"], "out": None} == {**by_flags["config"], "out": None}
    assert by_yaml["config"]["train_rows"] == 12 and by_yaml["config"]["variants"] == ["none", "static"]
    assert (by_yaml["config_file"], by_flags["config_file"]) == (config, None)
    bad = _yaml(tmp_path / "bad.yaml", f"data: {missing}\nout: {tmp_path / 'bad'}\ndevice: gpu\n")
    with pytest.raises(SystemExit):
        main(["sft-experiment", "--config", bad])
    assert "bad.yaml: device: 'gpu' is not a device; use cpu, cuda" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
