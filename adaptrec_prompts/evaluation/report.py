"""Turn run folders into a markdown table (variants x metrics, 95% CIs, n) and PNG plots.

Used by `eval/report.py` (its command line: `cli.report`) and `adaptrec experiment`:

    python eval/report.py runs/ml100k/* --out docs/results/ml100k-baselines --title "ML-100K test, baselines"
    python eval/report.py runs/userknn-n* --out docs/results/userknn-sweep --sweep n_retrieve

Numbers in docs come only from this script; the table records the command that produced it.
Plots: `bars.png` (HR@1 and NDCG@5 per run with CI whiskers) and, with `--sweep KEY`, `sweep.png`
(HR@1 / NDCG@5 against a program-config key such as m_select or n_retrieve).
"""

from __future__ import annotations

import textwrap
import json
import os
from pathlib import Path

METRICS = ("HR@1", "HR@1|valid", "HR@5", "NDCG@5", "ValidRatio")


def load_run(folder: Path) -> dict:
    """A run folder's results, config and program config. The top-1 position histogram is recomputed from
    the predictions log when the log holds exactly the run's examples (runs written before it existed)."""
    from adaptrec_prompts.evaluation.harness import top1_positions
    from adaptrec_prompts.evaluation.results import read_log

    results = json.loads((folder / "results.json").read_text())
    log = read_log(folder / "predictions.jsonl")
    if len(log) == results["n"] + results.get("errors", 0):
        results["top1_position"] = top1_positions(list(log.values()))
    manifest = json.loads((folder / "manifest.json").read_text())
    return {"name": folder.name, "results": results, "config": manifest["config"],
            "program": manifest["program"].get("config", {})}


def _row(cells: list[str]) -> str:
    """A markdown table row; a "|" inside a cell is escaped (and does not count as a column)."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def resampling_note(runs: list[dict]) -> str:
    """How the CIs of these runs were resampled (by example, or by user when users have several rows)."""
    units = {}
    for run in runs:
        res = run["results"].get("resampling") or {"unit": "example"}
        units.setdefault(res["unit"], []).append(f"{run['name']} ({res.get('clusters', '?')})")
    if set(units) <= {"example"}:
        return "95% CIs: percentile bootstrap over examples (one row per user).\n"
    return ("95% CIs: percentile bootstrap resampling *users* with all their rows (cluster bootstrap; users in "
            "brackets) for " + ", ".join(units["user"]) + "."
            + (" Over examples for " + ", ".join(units["example"]) + "." if "example" in units else "") + "\n")


def position_cell(results: dict) -> str:
    """The top-1's most common list position and its share ("#1 38%"), flagged (!) above 3x chance."""
    pos = results.get("top1_position") or {}
    if not pos.get("n"):
        return "-"
    return f"#{pos['most_common']} {100 * pos['most_common_share']:.0f}%" + (" (!)" if pos["flag"] else "")


def table(runs: list[dict]) -> str:
    """Markdown table: one row per run, every metric with its 95% CI, n, errors, where its top-1s sit in the
    candidate list, and seconds."""
    head = ["run", "program", "LM", "split", "n", "errors", *METRICS, "top-1 position", "LM s", "total s"]
    lines = [_row(head), _row(["---"] * len(head))]
    for run in runs:
        r, c = run["results"], run["config"]
        cells = []
        for key in METRICS:
            m = r["metrics"][key]
            cells.append("n/a" if m["value"] != m["value"] else f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]")
        lines.append(_row([run["name"], c.get("program"), c.get("lm") or "-", c.get("split"), r["n"],
                           r.get("errors", 0), *cells, position_cell(r), f"{r['lm_seconds']:.1f}",
                           f"{r['total_seconds']:.1f}"]))
    flagged = [run["name"] for run in runs if (run["results"].get("top1_position") or {}).get("flag")]
    note = ("`top-1 position`: the list position (1..K) the run's first choice most often has, and how often. "
            "(!) marks a share above 3x chance (3/K) that chance alone would not give on n examples (binomial, "
            "Bonferroni over K, p < 0.01)" + (": " + ", ".join(flagged) + " mostly pick a list position, "
                                                        "not an item for the user" if flagged else "") + ".\n")
    return "\n".join(lines) + "\n\n" + resampling_note(runs) + note


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def bars(runs: list[dict], path: Path, title: str) -> None:
    import numpy as np

    plt = _pyplot()

    x = np.arange(len(runs))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(runs)), 4))
    for offset, key in [(-0.2, "HR@1"), (0.2, "NDCG@5")]:
        vals = [r["results"]["metrics"][key] for r in runs]
        mid = np.array([v["value"] for v in vals])
        err = np.array([[v["value"] - v["ci_low"] for v in vals], [v["ci_high"] - v["value"] for v in vals]])
        ax.bar(x + offset, mid, width=0.4, yerr=err, capsize=3, label=key)
    ax.set_xticks(x, [r["name"] for r in runs], rotation=30, ha="right")
    _finish(plt, fig, ax, path, title)


def _finish(plt, fig, ax, path: Path, title: str) -> None:
    ax.set_ylabel("value (95% bootstrap CI)")
    ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=9)  # long titles wrap instead of clipping
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep(runs: list[dict], key: str, path: Path, title: str, references: list[dict] = ()) -> None:
    """HR@1 / NDCG@5 against program-config `key`, CI bands; `references` drawn as dashed HR@1 lines."""
    plt = _pyplot()
    points = sorted(((r["program"][key], r) for r in runs if key in r["program"]), key=lambda p: p[0])
    if len(points) < 2:
        raise SystemExit(f"error: --sweep {key}: fewer than two runs have program config key {key!r}")
    fig, ax = plt.subplots(figsize=(6, 4))
    for metric in ("HR@1", "NDCG@5"):
        xs = [p for p, _ in points]
        m = [r["results"]["metrics"][metric] for _, r in points]
        ax.plot(xs, [v["value"] for v in m], marker="o", label=metric)
        ax.fill_between(xs, [v["ci_low"] for v in m], [v["ci_high"] for v in m], alpha=0.2)
    for ref, style in zip(references, ("--", ":", "-.", (0, (1, 4))), strict=False):
        ax.axhline(ref["results"]["metrics"]["HR@1"]["value"], color="grey", linestyle=style,
                   label=f"{ref['name']} HR@1")
    ax.set_xlabel(key)
    ax.set_xticks([p for p, _ in points])
    _finish(plt, fig, ax, path, title)


def _verdict(res: dict) -> str:
    """Direction of a paired comparison at the 5% level, on HR@1 (McNemar) and NDCG@5 (sign flip)."""
    parts = []
    for key in ("HR@1", "NDCG@5"):
        r = res[key]
        parts.append(f"{key} {'B better' if r['diff'] > 0 else 'A better'} (p={r['p_value']:.3f})"
                     if r["p_value"] < 0.05 else f"{key} not separated")
    return "; ".join(parts)


def same_top1(left: dict, right: dict) -> str:
    """How many shared, scored examples two runs put the same item first on ("k/n")."""
    shared = [e for e in left if e in right and not left[e].get("error") and not right[e].get("error")]
    same = sum(1 for e in shared if left[e]["ranking"][:1] == right[e]["ranking"][:1])
    return f"{same}/{len(shared)}"


def load_log(path: Path, ids: set[str] | None = None) -> dict:
    """A run's per-example records (example id -> record), only those in `ids` when given."""
    from adaptrec_prompts.evaluation.results import read_log

    log = read_log(path)
    return log if ids is None else {e: r for e, r in log.items() if e in ids}


def exposure_split(runs: list[tuple[str, Path]], exposure: dict[str, str | None]) -> tuple[str, list[dict]]:
    """HR@1 of each run on the rows whose target the demonstrations show (as a shown user's next item or in
    a shown history: `baselines.demo_match.demo_exposure`) and on the rest: (a markdown table, the same as
    data). Both groups differ for every ranker (a shown target is also a popular one), so the evidence is a
    model's gap on the first group against a run without demonstrations. Errored examples are left out, as
    in the metrics."""
    data = []
    for name, folder in runs:
        log = {e: r for e, r in load_log(folder / "predictions.jsonl", set(exposure)).items()
               if "hit1" in r and not r.get("error")}
        shown = [r["hit1"] for e, r in log.items() if exposure[e]]
        hidden = [r["hit1"] for e, r in log.items() if not exposure[e]]
        data.append({"run": name, "n_shown": len(shown), "hr1_shown": sum(shown) / len(shown) if shown else None,
                     "n_not_shown": len(hidden), "hr1_not_shown": sum(hidden) / len(hidden) if hidden else None})

    def cell(value, n):
        return "-" if value is None else f"{value:.3f} ({round(value * n)}/{n})"

    lines = [_row(["run", "HR@1, target shown", "HR@1, target not shown"]), _row(["---"] * 3)]
    lines += [_row([d["run"], cell(d["hr1_shown"], d["n_shown"]), cell(d["hr1_not_shown"], d["n_not_shown"])])
              for d in data]
    return "\n".join(lines) + "\n", data


def run_exposure(folders: list[Path], m: int, demo_items: int | None, n: int = 10) -> dict[str, str | None]:
    """Example id -> where the static program (N, M, demo items) shows the target (`demo_exposure`), for the
    examples of these runs, read from the data folder their manifests name (one folder for all of them)."""
    from adaptrec_prompts.data.prepare import load_prepared
    from adaptrec_prompts.evaluation.baselines.demo_match import DemoMatchBaseline, demo_exposure

    data = {json.loads((f / "manifest.json").read_text())["config"].get("data") for f in folders}
    if len(data) != 1 or None in data:
        raise ValueError(f"--exposure needs runs of one data folder; these name {sorted(map(str, data))}")
    ids = set().union(*(load_log(f / "predictions.jsonl").keys() for f in folders))
    program = DemoMatchBaseline([], n_retrieve=n, m_select=m, demo_items=demo_items).program
    out = {}
    for split in load_prepared(data.pop()).values():
        if "neighbor_next_item_ids" in split.column_names:
            for row in split:
                if row["example_id"] in ids and row["neighbor_next_item_ids"]:
                    out[row["example_id"]] = demo_exposure(row, program=program)
    return out


def exposure_text(runs: list[tuple[str, Path]], exposure: dict[str, str | None], m: int,
                  demo_items: int | None) -> tuple[str, list[dict]]:
    """The "does the model read the demonstrations?" section: how often the prompt shows the target, and
    `exposure_split`."""
    table_text, data = exposure_split(runs, exposure)
    shown = sum(1 for v in exposure.values() if v)
    nxt = sum(1 for v in exposure.values() if v == "next")
    text = (f"The static prompt (M = {m}, each similar user's last {demo_items or 'all'} items) shows the target on "
            f"{shown} of {len(exposure)} rows ({nxt} as a shown user's next item). `demo-match` ranks the candidates "
            "by those users' votes alone. Every ranker does better where the target is shown (such targets are also "
            "popular ones): the evidence that a model reads the demonstrations is its gain there over a run that "
            "never sees them (Popularity, a zero-shot model) on the same rows.\n\n" + table_text)
    return text, data


def claims_data(folder: Path, pairs: list[tuple[str, str, str]], ids: set[str] | None = None) -> list[dict]:
    """One paired comparison (A -> B on shared examples) per claim whose two runs exist, as plain data
    (written to claims.json beside a report, and read by the results page's summary)."""
    from adaptrec_prompts.evaluation.metrics import paired_comparison

    out = []
    for claim, a, b in pairs:
        if not ((folder / a / "predictions.jsonl").is_file() and (folder / b / "predictions.jsonl").is_file()):
            continue
        left, right = load_log(folder / a / "predictions.jsonl", ids), load_log(folder / b / "predictions.jsonl", ids)
        res = paired_comparison(list(left.values()), list(right.values()))
        out.append({"claim": claim, "a": a, "b": b, "same_top1": same_top1(left, right), **res})
    return out


def claims(folder: Path, pairs: list[tuple[str, str, str]], notes: dict[str, str] | None = None,
           ids: set[str] | None = None, data: list[dict] | None = None) -> str:
    """Markdown table: one paired comparison (A -> B on shared examples) per claim of the paper."""
    lines = ["| claim | A -> B | n | HR@1 A, B (B - A [95% CI]) | NDCG@5 A, B (B - A [95% CI]) | at 5% | same top-1 |",
             "|---|---|---|---|---|---|---|"]
    for res in data if data is not None else claims_data(folder, pairs, ids):
        cells = [f"{r['a']:.3f}, {r['b']:.3f} ({r['diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}])"
                 for r in (res["HR@1"], res["NDCG@5"])]
        note = (notes or {}).get(res["b"], "")
        lines.append(f"| {res['claim']} | {res['a']} -> {res['b']}{note} | {res['n']} | {cells[0]} | {cells[1]} | "
                     f"{_verdict(res)} | {res['same_top1']} |")
    return "\n".join(lines) + "\n"


def runs_data(runs: list[dict]) -> list[dict]:
    """The runs of a report as plain data (runs.json): name, program, LM, split, n, errors, metrics."""
    return [{"name": r["name"], "program": r["config"].get("program"), "lm": r["config"].get("lm"),
             "split": r["config"].get("split"), "n": r["results"]["n"], "errors": r["results"].get("errors", 0),
             "resampling": r["results"].get("resampling"), "top1_position": r["results"].get("top1_position"),
             "metrics": r["results"]["metrics"]} for r in runs]


def write_json(path: Path, payload) -> None:
    path.write_text(json.dumps(payload, indent=1, sort_keys=True, default=str) + "\n")


def comparisons(reference: Path, others: list[Path], ids: set[str] | None = None,
                names: dict[Path, str] | None = None, data: list | None = None) -> str:
    """Markdown table of paired comparisons (B - A on shared examples) of each run against `reference`
    (only examples in `ids` when given: the rows a report covers, though logs may hold more; `names`: how
    each folder is called in the table, its folder name by default)."""
    from adaptrec_prompts.evaluation.metrics import paired_comparison

    names = names or {}
    a = list(load_log(reference / "predictions.jsonl", ids).values())
    lines = [f"Paired against `{names.get(reference, reference.name)}` on shared examples (B - A, 95% paired "
             "bootstrap CI; HR@1: exact McNemar p, NDCG@5: sign-flip permutation p; where users have several "
             "rows, the bootstrap resamples users and both p-values come from flipping each user's summed "
             "difference).", "",
             "| run (B) | n | HR@1 B - A | p | discordant A-only/B-only | NDCG@5 B - A | p |",
             "|---|---|---|---|---|---|---|"]
    for other in others:
        b = list(load_log(other / "predictions.jsonl", ids).values())
        res = paired_comparison(a, b)
        if data is not None:  # the same comparisons as data (comparisons.json)
            data.append({"a": names.get(reference, reference.name), "b": names.get(other, other.name), **res})
        h, g = res["HR@1"], res["NDCG@5"]
        lines.append(f"| {names.get(other, other.name)} | {res['n']} | "
                     f"{h['diff']:+.3f} [{h['ci_low']:+.3f}, {h['ci_high']:+.3f}] | "
                     f"{h['p_value']:.3f} | {'/'.join(map(str, h.get('discordant', ())))} | "
                     f"{g['diff']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}] | {g['p_value']:.3f} |")
    return "\n".join(lines) + "\n"


def unique_names(folders: list[Path]) -> dict[Path, str]:
    """Each run folder's name in a report: its folder name, or as many parent folders as tell two runs of
    the same name apart (`ml-100k/runs/tuned-zero-shot` next to `ml-100k-letters/runs/tuned-zero-shot`)."""
    parts = {f: Path(os.path.normpath(f.absolute())).parts for f in folders}
    depth = 1
    while True:
        names = {f: "/".join(p[-depth:]) for f, p in parts.items()}
        if len(set(names.values())) == len(folders) or depth >= max(map(len, parts.values())):
            return names
        depth += 1


def choice_report(adapters: list[Path], out: Path, title: str, command: str = "") -> Path:
    """Compare training objectives by what they teach: each adapter folder's choice diagnostics
    (`finetune.callbacks.ChoiceDiagnostics`, recorded while it trained) as one table and one plot - the choice NLL
    and HR@1 on the validation slice (and on its own training rows) against rows seen - next to what
    `baseline:demo-match` gets on the same validation rows with the same M and demo items. Writes
    out/table.md, out/choice.png and out/choice.json; returns out."""
    import math

    from adaptrec_prompts.data.prepare import load_prepared
    from adaptrec_prompts.evaluation.baselines.demo_match import DemoMatchBaseline
    from adaptrec_prompts.retrieval.embedders import training_sequences

    entries = []
    names = unique_names(adapters)  # adapters of two experiments are both called e.g. "static"
    for folder in adapters:
        manifest = json.loads((folder / "adaptrec_manifest.json").read_text())
        script = manifest["config"]["script"]
        training = manifest["config"]["training"]
        records = manifest.get("choice_diagnostics") or []
        if not records:
            raise ValueError(f"{folder}: no choice diagnostics recorded (train with --diagnostics_rows N)")
        per_step = training["per_device_train_batch_size"] * training["gradient_accumulation_steps"]
        entries.append({"name": names[folder], "folder": folder, "script": script, "records": records,
                        "per_step": per_step, "lr": training["learning_rate"], "rows": manifest["train_rows"],
                        "seconds": manifest.get("train_seconds_this_invocation")})
    first = entries[0]["script"]
    settings = {(e["script"]["data"], e["script"]["diagnostics_split"], e["script"]["diagnostics_rows"],
                 e["script"]["m_select"], e["script"]["n_retrieve"], e["script"]["demo_items"]) for e in entries}
    if len(settings) != 1:
        raise ValueError(f"the adapters were diagnosed on different rows or prompts: {sorted(map(str, settings))}")
    ddict = load_prepared(first["data"])
    split = ddict[first["diagnostics_split"]]
    valid = split.select(range(min(first["diagnostics_rows"], split.num_rows))).to_list()  # what the callback scored
    if not valid:
        raise ValueError("the adapters were diagnosed on no validation rows (train with --diagnostics_rows N): "
                         "objectives are compared on validation rows")
    floor = DemoMatchBaseline(training_sequences(ddict["train"]), n_retrieve=first["n_retrieve"],
                              m_select=first["m_select"], demo_items=first["demo_items"])
    floor_hr1 = sum(floor.predict_row(r)["ranking"][0] == r["target_item_id"] for r in valid) / len(valid)
    k = entries[0]["records"][0]["k"]
    lines = [f"### {title}", "", f"Generated by `{command}`." if command else "", "",
             f"Diagnostics slice: the first {len(valid)} `{first['diagnostics_split']}` rows (never test), scored in "
             f"score mode by each adapter while it trained; chance choice NLL is ln {k} = {math.log(k):.3f}. "
             f"`baseline:demo-match` (M = {first['m_select']}, each similar user's last "
             f"{first['demo_items'] or 'all'} items) on the same rows: HR@1 {floor_hr1:.3f} "
             f"({round(floor_hr1 * len(valid))}/{len(valid)}).", "",
             "| adapter | labels | loss | lr | rows seen | slice (n) | choice NLL | HR@1 | HR@1, target shown | "
             "HR@1, not shown | top-1 position |", "|" + " --- |" * 11]

    def part(value, n):
        return "-" if value is None else f"{value:.3f} (n={n})"

    for e in entries:
        for d in e["records"]:
            lines.append(f"| {e['name']} | {e['script']['labels']} | {e['script']['loss']} | {e['lr']:g} | "
                         f"{d['step'] * e['per_step']} | {d['slice']} ({d['n']}) | {d['choice_nll']:.3f} | "
                         f"{d['hr1']:.3f} | {part(d['hr1_target_shown'], d['n_target_shown'])} | "
                         f"{part(d['hr1_target_not_shown'], d['n_target_not_shown'])} | "
                         f"#{d['top1_position']} {100 * d['top1_position_share']:.0f}% |")
    lines += ["", "Training: " + "; ".join(
        f"`{e['name']}` {e['rows']} rows, {e['records'][-1]['step']} steps of {e['per_step']}"
        + (f", {e['seconds']:.0f} s with its diagnostics" if e["seconds"] else "") for e in entries) + ".", "",
              "![choice](choice.png)", ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(lines))
    write_json(out / "choice.json", {"floor_hr1": floor_hr1, "rows": len(valid), "k": k,
                                     "adapters": [{"name": e["name"], "labels": e["script"]["labels"],
                                                   "loss": e["script"]["loss"], "lr": e["lr"], "rows": e["rows"],
                                                   "per_step": e["per_step"], "records": e["records"]}
                                                  for e in entries]})
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for e in entries:
        for slice_name, style in ((first["diagnostics_split"], "-"), ("train", ":")):
            rows = sorted((d for d in e["records"] if d["slice"] == slice_name), key=lambda d: d["step"])
            if rows:
                x = [d["step"] * e["per_step"] for d in rows]
                axes[0].plot(x, [d["choice_nll"] for d in rows], style, marker="o", label=f"{e['name']} {slice_name}")
                axes[1].plot(x, [d["hr1"] for d in rows], style, marker="o", label=f"{e['name']} {slice_name}")
    axes[0].axhline(math.log(k), color="grey", linestyle="--", label=f"chance (ln {k})")
    axes[1].axhline(floor_hr1, color="black", linestyle="--", label=f"demo-match ({first['diagnostics_split']})")
    axes[1].axhline(1 / k, color="grey", linestyle="--", label="chance (1/K)")
    axes[0].set_ylabel("choice NLL (lower is better)")
    axes[1].set_ylabel("HR@1")
    for ax in axes:
        ax.set_xlabel("training rows seen")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "choice.png", dpi=110)
    plt.close(fig)
    return out
