"""`adaptrec pipeline`: the README's main job as one resumable function.

ML-100K is prepared (or reused), Stage-1 neighbours are written for its test split with the collab embedder
in an embedded Chroma folder, the classical baselines and demo-match (the no-LM reading of the users the
prompt shows) score the whole test split, and an LM runs AdaptRec (static selection, M users) and zero-shot on
the first `limit` test users in score mode, untuned and, with Gemma 3 270M, with the LoRA adapters shipped in
finetune/adapters (the paper's main setting: fine-tuned with vs without demonstrations). Every step is the
library call its own command makes (`prepare_dataset`, `UserIndex.open` + `add_neighbors`, `run_eval`), so
rerunning reuses the data, the neighbours and every finished example.

    from adaptrec_prompts.experiments.pipeline import main_job, table
    runs = main_job("artifacts/main", raw_dir="../shared/data/ml-100k", lm="hf:artifacts/models/tiny", limit=3)
    print(table(runs))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from adaptrec_prompts.backends.lora import MANIFEST, manifest, trained_settings
from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.evaluation.report import position_cell
from adaptrec_prompts.evaluation.results import Results, format_results
from adaptrec_prompts.evaluation.runs import RunConfig, load_lm, run_eval

BASELINES = ("random", "popularity", "userknn")
# LoRA adapters on Gemma 3 270M shipped with the repository (finetune/adapters/*/adaptrec_manifest.json says how
# each was trained; docs/results.md measures them): zero-shot prompts, and AdaptRec's static M = 5 demonstrations
SHIPPED = Path(__file__).resolve().parents[2] / "finetune" / "adapters"
SHIPPED_ADAPTERS = ("ml-100k-listwise-zero-shot", "ml-100k-listwise-static")
SHIPPED_BASE = "gemma-3-270m"


def shipped_adapters(lm: str) -> list[Path]:
    """The shipped adapters for `lm`: both folders when `lm` is the Gemma 3 270M preset they were trained on and
    the folders are here (a clone of the repository), else none."""
    folders = [SHIPPED / name for name in SHIPPED_ADAPTERS]
    return folders if lm == SHIPPED_BASE and all((f / "adapter_config.json").is_file() for f in folders) else []


def adapter_program(adapter: str | Path) -> dict:
    """The selection, M and demo_items an adapter was trained with (its adaptrec_manifest.json's program)."""
    program = (manifest(adapter) or {}).get("program")
    if not isinstance(program, dict):
        raise ConfigError(f"adapters: {Path(adapter) / MANIFEST} is missing or has no program record; pass adapter "
                          "folders written by `adaptrec sft-experiment` or finetune/sft.py")
    return {"selection": program.get("selection", "none"), "m": program.get("m_select") or 5,
            "demo_items": program.get("demo_items")}


def tuned_run_name(lm: str, selection: str) -> str:
    """The run folder of a tuned row: <model>-tuned-zero-shot, or <model>-tuned-<selection>."""
    return f"{lm_run_name(lm, 'none').removesuffix('-zero-shot')}-tuned-{'zero-shot' if selection == 'none' else selection}"


def lm_run_name(lm: str, program: str) -> str:
    """The run folder of an LM row: the model's folder name plus zero-shot or static."""
    return f"{lm.removeprefix('hf:').rsplit('/', 1)[-1]}-{'zero-shot' if program == 'none' else 'static'}"


def main_job(out: str | Path = "artifacts/main", *, raw_dir: str | Path | None = None, lm: str = "gemma-3-270m",
             limit: int = 40, n: int = 10, m: int = 5, device: str = "cpu", progress: bool = True,
             adapters: Sequence[str | Path] | None = None) -> dict[str, Results]:
    """Run (or resume) the main job under `out`; run name -> its results, baselines first, then the untuned LM
    (zero-shot, static), then one row per adapter.

    Args:
        out: the job folder: ml-100k (prepared), ml-100k-nb (with neighbours), chroma, raw, runs/<name>.
        raw_dir: the ml-100k raw folder (None downloads it from GroupLens into out/raw).
        lm: the LM for the AdaptRec and zero-shot rows (`RunConfig.lm`).
        limit: test users for the LM rows (95 is the whole split).
        n: neighbours per example (N); m: demonstrations (M).
        device: where a local LM runs (cpu, cuda, cuda:N, mps, auto; `RunConfig.device`).
        progress: bars while Stage 1 embeds, indexes and queries, and while each run scores its examples
            (`--no-progress`; `progress.enabled` has the rule).
        adapters: LoRA adapter folders trained on `lm`, one tuned row each (its trained selection, M, prompt,
            labels and demo_items; named <model>-tuned-<selection>). None: `shipped_adapters(lm)`; [] for none.
            demo-match, the floor a tuned AdaptRec row must clear, is scored with the M and demo_items of the
            first adapter that shows demonstrations (else M = `m`, whole histories, as the untuned static row).
    """
    from adaptrec_prompts.backends.api import is_local
    from adaptrec_prompts.data.prepare import load_manifest, prepare_dataset
    from adaptrec_prompts.retrieval.index import UserIndex
    from adaptrec_prompts.retrieval.neighbors import add_neighbors
    from adaptrec_prompts.utils.devices import check_device, resolve_device

    check_device(device, "device")
    if is_local(lm):  # a GPU torch cannot see: refused before the data and the neighbours are built
        resolve_device(device)
    adapters = shipped_adapters(lm) if adapters is None else [Path(a) for a in adapters]
    if adapters and not is_local(lm):
        raise ConfigError(f"adapters: LoRA folders load on a local model only, and --lm {lm} is not one; pass the "
                          "base they were trained on (gemma-3-270m or hf:PATH), or --adapters none")
    tuned = [(Path(a), adapter_program(a)) for a in adapters]  # a folder without its record: refused before any work
    names = [tuned_run_name(lm, p["selection"]) for _, p in tuned]
    if len(set(names)) < len(names):
        raise ConfigError(f"adapters: {', '.join(map(str, adapters))} include two trained with the same selection; "
                          "their rows would share one run folder: pass one adapter per selection")
    shown = [p for _, p in tuned if p["selection"] != "none"]
    floor = {"m": shown[0]["m"], "demo_items": shown[0]["demo_items"]} if shown else {"m": m, "demo_items": None}
    out = Path(out)
    data, nb, runs = out / "ml-100k", out / "ml-100k-nb", out / "runs"
    if not (data / "manifest.json").is_file():
        prepare_dataset("ml-100k", data, raw_dir=raw_dir, cache_dir=out / "raw")
        counts = ", ".join(f"{s}={c}" for s, c in load_manifest(data)["counts"]["examples"].items())
        print(f"wrote {data} (ml-100k, seed 0): {counts}", flush=True)
    if not (nb / "manifest.json").is_file():
        index = UserIndex.open(out / "chroma", data=data, progress=progress)
        add_neighbors(data, nb, index, index.embedder, n=n, splits=["test"], progress=progress)
        print(f"wrote {nb}: top-{n} neighbours from {index.name}", flush=True)
    results: dict[str, Results] = {}
    for baseline in (*BASELINES, "demo-match"):
        # demo-match reads the prompt of the row it is the floor of: its folder names those settings, so a rerun
        # with other adapters never reuses a floor built for another prompt
        folder = runs / (f"demo-match-m{floor['m']}-items{floor['demo_items'] or 'all'}"
                         if baseline == "demo-match" else baseline)
        if (folder / "results.json").is_file():  # a finished full-split run: nothing to resume
            results[baseline] = Results.load(folder)
            continue
        extra = floor if baseline == "demo-match" else {}
        results[baseline] = run_eval(RunConfig(data=nb, out=folder, program=f"baseline:{baseline}", n=n, **extra),
                                     progress=progress)
        print(format_results(str(folder), results[baseline]), flush=True)
    model = None
    for program in ("none", "static"):
        name = lm_run_name(lm, program)
        config = RunConfig(data=nb, out=runs / name, program=program, lm=lm, mode="score", n=n, m=m, limit=limit,
                           device=device)
        model = model or load_lm(config, progress)  # one model for both rows
        results[name] = run_eval(config, lm=model, progress=progress)
        print(format_results(str(config.out), results[name]), flush=True)
    del model  # each tuned row loads the base again with its adapter: not two copies at once
    for (adapter, trained), name in zip(tuned, names, strict=True):
        selection = trained["selection"]
        config = RunConfig(data=nb, out=runs / name, program=selection, lm=lm, adapter=str(adapter), mode="score",
                           n=n, m=trained["m"], limit=limit, device=device,
                           **(trained_settings(adapter) or {}))  # the prompt, labels and demo_items it was trained on
        results[name] = run_eval(config, progress=progress)
        print(format_results(str(config.out), results[name]), flush=True)
    return results


def chance_level(k: int) -> dict[str, float]:
    """HR@1 and NDCG@5 of a ranking drawn at random among K candidates (one relevant item): 1/K, and the mean of
    1/log2(1 + r) over the ranks r <= 5 the target falls at with probability 1/K each."""
    return {"HR@1": 1 / k, "NDCG@5": sum(1 / math.log2(1 + r) for r in range(1, min(5, k) + 1)) / k}


def table(results: dict[str, Results], *, limit: int = 40, n: int = 10, m: int = 5, k: int = 20) -> str:
    """The job's table: every run's n, HR@1 and NDCG@5 with 95% CIs, ValidRatio and where its top-1s sit in the
    candidate list; then the chance level, what the metrics mean, and a line for each run whose top-1 is mostly
    one list position (`harness.top1_positions`: a flag above 3x chance that chance would not give)."""
    width = max(26, *(len(name) + 2 for name in results))  # the run names stay one column
    chance = chance_level(k)
    lines = [f"ML-100K test (LLaRA-compatible held-out users), K={k}, score mode, M={m}, N={n}; "
             f"LLM rows on the first {limit} users; 95% bootstrap CIs",
             f"{'run':<{width}}{'n':>5}  {'HR@1':<22}{'NDCG@5':<22}{'ValidRatio':>10}  top-1 position"]
    flagged = []
    for name, r in results.items():
        cells = {key: f"{r.metrics[key]['value']:.3f} [{r.metrics[key]['ci_low']:.3f}, {r.metrics[key]['ci_high']:.3f}]"
                 for key in ("HR@1", "NDCG@5")}
        position = r.get("top1_position") or {}
        lines.append(f"{name:<{width}}{r.n:>5}  {cells['HR@1']:<22}{cells['NDCG@5']:<22}"
                     f"{r.metrics['ValidRatio']['value']:>10.3f}  {position_cell(r)}")
        if position.get("flag"):
            top = position["most_common"]
            flagged.append(f"(!) {name}: its top-1 is the candidate at list position {top} for "
                           f"{position['counts'][top - 1]} of {position['n']} users (chance: 1 in {k}); it is "
                           "picking a list position, not an item for the user")
    lines += [f"Chance level (a random ranking of K={k}): HR@1 = {chance['HR@1']:.3f}, "
              f"NDCG@5 = {chance['NDCG@5']:.3f}.",
              "HR@1: share of users whose held-out next item is ranked first. NDCG@5: 1/log2(1 + rank) of that "
              "item when it is in the top 5, else 0, averaged. ValidRatio: share of outputs that rank the "
              "candidates (an invalid output counts as a miss). top-1 position: the list position most often "
              "ranked first and its share; (!) above 3x chance and beyond what chance gives on n users "
              "(binomial, p < 0.01).", *flagged]
    if "demo-match" in results:
        lines.insert(-1 - len(flagged), "demo-match: no LM; each candidate scores the votes of the similar users the "
                     "AdaptRec prompt shows (1 for the item each chose next, 0.5 for one among their items shown), ties by "
                     "popularity: the floor a model that reads the demonstrations must clear.")
    return "\n".join(lines)


def describe_adapters(adapters: Sequence[str | Path]) -> list[str]:
    """One line per adapter: its folder and how it was trained (adaptrec_manifest.json), for the job's output."""
    lines = []
    for adapter in adapters:
        recorded = manifest(adapter) or {}
        program, config = recorded.get("program") or {}, recorded.get("config") or {}
        script, model = config.get("script") or {}, config.get("model") or {}
        lines.append(f"{adapter}: LoRA r={model.get('lora_r', '?')} on {Path(recorded.get('base_model') or '?').name}, "
                     f"{script.get('loss', 'answer')} loss, {recorded.get('train_rows', '?')} training windows of "
                     f"{recorded.get('data', '?')} ({recorded.get('steps', '?')} steps); selection "
                     f"{program.get('selection', 'none')}, prompt {program.get('prompt', 'full')}, labels "
                     f"{program.get('labels', 'numbers')}, demo_items {program.get('demo_items')}")
    return lines

