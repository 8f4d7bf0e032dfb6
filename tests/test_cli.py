import json
import subprocess
import sys
import zipfile

import datasets
import pytest

from adaptrec_prompts.cli.app import main
from adaptrec_prompts.data._io import sha256_file
from adaptrec_prompts.data.download import Archive, download
from adaptrec_prompts.errors import DownloadError
from conftest import REPO


def test_prepare_and_stats_goodreads(goodreads_raw, tmp_path, capsys):
    out = tmp_path / "gr"
    assert main(["data", "prepare", "--dataset", "goodreads", "--raw-dir", str(goodreads_raw), "--out", str(out),
                 "--seed", "3"]) == 0
    assert "wrote" in capsys.readouterr().out
    ddict = datasets.load_from_disk(str(out))
    assert set(ddict) == {"train", "valid", "test", "test_extended"}
    assert json.loads((out / "manifest.json").read_text())["seed"] == 3
    assert main(["data", "stats", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dataset goodreads: 40 items" in printed and "test_extended" in printed


def test_prepare_llara_movielens_with_items_file(llara_movielens_raw, ml100k_raw, tmp_path, capsys):
    out = tmp_path / "llara-ml"
    assert main(["data", "prepare", "--dataset", "llara", "--raw-dir", str(llara_movielens_raw),
                 "--items-file", str(ml100k_raw / "u.item"), "--out", str(out)]) == 0
    ddict = datasets.load_from_disk(str(out))
    assert (ddict["train"].num_rows, ddict["valid"].num_rows, ddict["test"].num_rows) == (0, 94, 95)


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, goodreads_raw):
    assert main(["data", "prepare", "--dataset", "nope", "--raw-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "valid: ml-100k, lastfm, goodreads, llara" in capsys.readouterr().err
    assert main(["data", "prepare", "--dataset", "ml-100k", "--raw-dir", str(tmp_path), "--out",
                 str(tmp_path / "o")]) == 2
    assert "missing file" in capsys.readouterr().err
    out = tmp_path / "exists"
    out.mkdir()
    assert main(["data", "prepare", "--dataset", "goodreads", "--raw-dir", str(goodreads_raw), "--out",
                 str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "stats", str(tmp_path)]) == 2
    assert "adaptrec data prepare" in capsys.readouterr().err


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "adaptrec_prompts.cli", "data", "prepare", "--help"],
                            capture_output=True, text=True, check=True)
    assert "--raw-dir" in result.stdout


def _archive(tmp_path, content=b"1\t1\t5\t1\n"):
    zpath = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("ml-100k/u.data", content)
    member = tmp_path / "member"
    member.write_bytes(content)
    return zpath, sha256_file(member)


def test_download_verifies_and_unpacks(tmp_path):
    zpath, digest = _archive(tmp_path)
    arch = Archive(url=zpath.as_uri(), folder="ml-100k", file_sha256={"u.data": digest})
    raw = download("ml-100k", tmp_path / "cache", archive=arch)
    assert (raw / "u.data").read_bytes() == b"1\t1\t5\t1\n"
    assert download("ml-100k", tmp_path / "cache", archive=arch) == raw  # cached, verified


def test_download_rejects_a_wrong_checksum(tmp_path):
    zpath, _ = _archive(tmp_path)
    arch = Archive(url=zpath.as_uri(), folder="ml-100k", file_sha256={"u.data": "0" * 64})
    with pytest.raises(DownloadError, match="does not match"):
        download("ml-100k", tmp_path / "cache", archive=arch)
    arch_md5 = Archive(url=zpath.as_uri(), folder="ml-100k", md5="0" * 32)
    with pytest.raises(DownloadError, match="MD5"):
        download("ml-100k", tmp_path / "cache2", archive=arch_md5)


def test_download_offline_says_raw_dir(tmp_path):
    arch = Archive(url="http://127.0.0.1:9/ml-100k.zip", folder="ml-100k")
    with pytest.raises(DownloadError, match="--raw-dir"):
        download("ml-100k", tmp_path, archive=arch, timeout=5)


def test_import_stays_light():
    code = ("import sys, adaptrec_prompts, adaptrec_prompts.cli.app; "
            "heavy = [m for m in ('torch', 'chromadb', 'trl', 'transformers', 'peft') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_pipeline_main_job_with_a_local_model(ml100k_raw, tiny_model, tmp_path, capsys):
    """The README main command end to end (tiny local model instead of Gemma; 3 LLM examples), then with an
    adapter: its row runs the prompt it was trained on, and demo-match takes that row's M and demo_items."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from adaptrec_prompts.programs.adaptrec import AdaptRec
    from adaptrec_prompts.data.render import load_template

    out = tmp_path / "main"
    argv = ["pipeline", "--raw-dir", str(ml100k_raw), "--out", str(out), "--lm", f"hf:{tiny_model}", "--limit", "3"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    names = ("random", "popularity", "userknn", "demo-match", "micro-zero-shot", "micro-static", "micro-tuned-static")
    rows = lambda text: [line.split()[0:2] for line in text.splitlines() if line.split()[:1] and line.split()[0] in names]
    assert rows(printed) == [["random", "95"], ["popularity", "95"], ["userknn", "95"], ["demo-match", "95"],
                             ["micro-zero-shot", "3"], ["micro-static", "3"]]
    assert "Full test set: --limit 95" in printed and "demo-match: no LM" in printed
    assert "Tuned rows" not in printed  # no adapter for this model: no tuned row, and no claim of one
    before = (out / "runs" / "micro-static" / "predictions.jsonl").read_bytes()
    assert main(argv) == 0  # a second run reuses the data, neighbours and finished examples
    assert (out / "runs" / "micro-static" / "predictions.jsonl").read_bytes() == before
    capsys.readouterr()

    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                   LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    program = AdaptRec(load_template("movies"), selection="static", m_select=3, prompt="compact", labels="titles",
                       demo_items=4).config()
    (adapter / "adaptrec_manifest.json").write_text(json.dumps({"base_model": str(tiny_model), "program": program,
                                                                "train_rows": 8, "steps": 2}))
    assert main([*argv, "--adapters", f"{adapter},{adapter}"]) == 2  # one per selection
    assert "include two trained with the same selection" in capsys.readouterr().err
    assert main([*argv, "--lm", "openai/gpt-4o-mini", "--adapters", str(adapter)]) == 2  # before any row runs
    assert "load on a local model only, and --lm openai/gpt-4o-mini is not one" in capsys.readouterr().err
    assert main([*argv, "--adapters", str(adapter)]) == 0  # the same job folder
    printed = capsys.readouterr().out
    assert rows(printed)[-1] == ["micro-tuned-static", "3"]
    assert "paired: adaptrec compare" not in printed.split("Tuned rows")[1]  # no zero-shot twin: no pair to compare
    manifest = json.loads((out / "runs" / "micro-tuned-static" / "manifest.json").read_text())
    used = manifest["config"]["program_config"]
    assert (used["labels"], used["prompt"], used["demo_items"], used["m_select"]) == ("titles", "compact", 4, 3)
    floor = json.loads((out / "runs" / "demo-match-m3-items4" / "manifest.json").read_text())
    assert (floor["run_config"]["m"], floor["run_config"]["demo_items"]) == (3, 4)
    assert (out / "runs" / "demo-match-m5-itemsall" / "results.json").is_file()  # the first floor, not reused for it
    assert f"{adapter}: LoRA r=? on {tiny_model.name}," in printed and "selection static, prompt compact, labels titles" in printed


def test_pipeline_table_states_chance_the_metrics_and_flags_a_position_picker(tmp_path):
    from adaptrec_prompts.evaluation.results import Results
    from adaptrec_prompts.experiments.pipeline import chance_level, table

    def run(hr1, counts, flag):
        metric = lambda v: {"value": v, "ci_low": v, "ci_high": v}
        position = {"counts": counts, "n": sum(counts), "most_common": counts.index(max(counts)) + 1,
                    "most_common_share": max(counts) / sum(counts), "flag": flag}
        return Results(tmp_path, {"n": sum(counts), "errors": 0, "top1_position": position,
                                  "metrics": {"HR@1": metric(hr1), "NDCG@5": metric(0.2), "ValidRatio": metric(1.0)}})

    assert chance_level(20) == pytest.approx({"HR@1": 0.05, "NDCG@5": 0.147423}, abs=1e-6)
    text = table({"popularity": run(0.2, [5, 4] + [1] * 18 + [], False),
                  "gemma-3-270m-static": run(0.05, [38, 2] + [0] * 18, True)}, limit=40)
    assert "Chance level (a random ranking of K=20): HR@1 = 0.050, NDCG@5 = 0.147." in text
    assert "HR@1: share of users whose held-out next item is ranked first" in text and "ValidRatio:" in text
    assert "#1 95% (!)" in text.splitlines()[3]  # the table's position column
    flags = [line for line in text.splitlines() if line.startswith("(!)")]
    assert flags == ["(!) gemma-3-270m-static: its top-1 is the candidate at list position 1 for 38 of 40 users "
                     "(chance: 1 in 20); it is picking a list position, not an item for the user"]


def test_pipeline_and_compare_help_describe_every_argument(capsys):
    for argv in (["pipeline", "--help"], ["compare", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
    pipeline, compare = capsys.readouterr().out.split("usage: adaptrec compare")
    options = pipeline.split("options:", 1)[1]
    for option, default in (("--out OUT", "artifacts/main"), ("--n N", "10"), ("--m M", "5"), ("--limit LIMIT", "40")):
        described = options.split("\n  " + option, 1)[1].split("\n  --", 1)[0]
        assert f"default: {default}" in described and len(described.split()) > 4, described
    assert "the chance level" in " ".join(pipeline.split())  # argparse wraps the description
    assert "run folder A" in compare and "run folder B" in compare and "McNemar" in compare


def test_the_readme_test_command_is_the_one_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    pytest_line = [line for line in ci.splitlines() if "-m pytest" in line][0]
    assert pytest_line.split("python ", 1)[1] in readme  # -m pytest -q -rs -p no:cacheprovider
    assert "DSPY_CACHEDIR" in readme
