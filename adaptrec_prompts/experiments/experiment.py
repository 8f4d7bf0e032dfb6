"""`adaptrec experiment`: the paper's claims as one resumable command per dataset.

For one LM and one frozen split it runs, on the same examples:

- baselines (Random, Popularity, UserKNN over the same Stage-1 neighbours);
- `zero-shot` (no demonstrations), `random-m{M}` (M users drawn at random from the whole Stage-1 pool,
  the paper's control), `static-m{M}` (the top M by embedding similarity), `adaptive-m{M}` (Stage 2: the
  same LM picks M of the N retrieved users), optionally `random-retrieved-m{M}` (M of the N retrieved, at
  random): do demonstrations help, do retrieved users beat random ones, does LLM selection beat static?
- `static-m{1,3,5,7,9}` at N: the M sweep (the paper's inverted U);
- optionally `static-m{M}-<embedder>-pool<P>` for each Stage-1 embedder (collab vs lm) on the same seeded
  sample of P training examples, built here with Chroma: does retrieval matter?

Runs grow in rounds of `chunk` examples (every variant at 20, then at 40, ...), so stopping at any point
leaves every variant on the same examples; rerunning resumes (finished examples are never recomputed, see
`harness.run_identity`). After every round the report folder is rewritten: table.md (metrics with 95%
CIs), compare.md (paired tests against zero-shot), bars.png and sweep.png.

    from adaptrec_prompts.experiments.experiment import Experiment, run_experiment
    run_experiment(Experiment(data="artifacts/ml-100k-nb", lm="gemma-3-270m", out="runs/exp/ml-100k", limit=95))

Every run goes through `runs.run_eval`, so each run folder is exactly what `adaptrec eval` writes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from adaptrec_prompts.errors import ConfigError, IncompleteRunError

BASELINES = ("random", "popularity", "userknn")
VARIANTS = ("none", "random", "random-retrieved", "static", "adaptive")
SCORE_MODES = ("score", "score-calibrated", "score-permuted")


@dataclass
class Experiment:
    """One dataset's experiment (see the module docstring); the fields are `adaptrec experiment`'s options.

    Attributes:
        data: a prepared folder with neighbour columns for `split`.
        lm: "gemma-3-270m", "hf:PATH" or a provider/model (`RunConfig.lm`).
        out: the experiment folder (one run folder per variant, stage1/, report/).
        split: the frozen split every variant is scored on.
        limit: examples per variant (None: the whole split).
        chunk: examples added to every variant per round.
        variants: AdaptRec selections run at `m` (none is the zero-shot row).
        m: M for the variants (the paper's 5); m_values: the static-selection M sweep (empty: none).
        n: N retrieved users.
        embedders: Stage-1 comparison (e.g. ("collab", "lm")), each over the same seeded sample of
            `pool_size` training examples of `prepared` (the folder without neighbours).
        embed_model: the lm embedder's model folder (None: the `lm` model's folder).
        mode: Stage-3 scoring mode.
        device: where a local LM (and the lm embedder) runs: cpu, cuda, cuda:N, mps or auto (`devices`);
            recorded in every run's manifest when not "cpu", as `adaptrec eval --device` does.
        report: the report folder (None: out/report); title: its title (None: dataset and split).
    """

    data: str
    lm: str
    out: str
    split: str = "test"
    limit: int | None = None
    chunk: int = 20
    variants: tuple[str, ...] = ("none", "random", "static", "adaptive")
    m: int = 5
    m_values: tuple[int, ...] = (1, 3, 5, 7, 9)
    n: int = 10
    embedders: tuple[str, ...] = ()
    prepared: str | None = None
    pool_size: int = 3000
    embed_model: str | None = None
    mode: str = "score"
    max_new_tokens: int = 64
    seed: int = 0
    device: str = "cpu"
    report: str | None = None
    title: str | None = None

    def __post_init__(self) -> None:
        from adaptrec_prompts.utils.devices import DEVICES, device_problem

        if device_problem(self.device):
            raise ConfigError(f"Experiment.device={self.device!r} is not valid; use {DEVICES}")
        unknown = set(self.variants) - set(VARIANTS)
        if unknown:
            raise ConfigError(f"unknown variants {sorted(unknown)}; valid: {', '.join(VARIANTS)}")
        if self.mode not in SCORE_MODES:
            raise ConfigError(f"Experiment.mode={self.mode!r} is not valid; use one of {', '.join(SCORE_MODES)}")
        for name in ("chunk", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"Experiment.{name} must be >= 1, got {value}")


@dataclass
class Run:
    name: str
    program: str
    data: str
    m: int
    uses_lm: bool = True


def plan(data: str, variants: list[str], m: int, m_values: list[int], stage1: dict[str, str]) -> list[Run]:
    """The runs in the order they are scheduled within a round (most informative first)."""
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ConfigError(f"unknown variants {sorted(unknown)}; valid: {', '.join(VARIANTS)}")
    runs = [Run(b, f"baseline:{b}", data, m, uses_lm=False) for b in BASELINES]
    for v in variants:
        runs.append(Run("zero-shot" if v == "none" else f"{v}-m{m}", v, data, m))
    if "static" in variants or m_values:
        for mv in m_values:
            if mv != m or "static" not in variants:
                runs.append(Run(f"static-m{mv}", "static", data, mv))
    for name, folder in stage1.items():
        runs.append(Run(f"static-m{m}-{name}", "static", folder, m))
    return runs


def stage1_folders(prepared: str, out: Path, embedders: list[str], pool_size: int, split: str, n: int,
                   embed_model: str | None, progress: bool = True, device: str = "cpu") -> dict[str, str]:
    """Build (once) a neighbour folder per embedder over the same seeded pool sample; name -> folder.
    `progress`: bars while each pool is embedded and indexed and the split is queried; `device`: where the
    lm/text embedders' model runs."""
    from adaptrec_prompts.retrieval.embedders import make_embedder
    from adaptrec_prompts.retrieval.index import make_client
    from adaptrec_prompts.retrieval.index import open_index
    from adaptrec_prompts.retrieval.neighbors import add_neighbors

    folders = {}
    client = None
    for kind in embedders:
        name = f"{kind}-pool{pool_size}"
        folder = out / "stage1" / name
        folders[name] = str(folder)
        if (folder / "manifest.json").is_file():
            continue
        client = client or make_client(path=out / "stage1" / "chroma")
        started = time.perf_counter()
        embedder = make_embedder(kind, prepared, embed_model if kind != "collab" else None, device)
        index = open_index(prepared, embedder, client, pool_size=pool_size, progress=progress)
        section = add_neighbors(prepared, folder, index, embedder, n=n, splits=[split], progress=progress)
        line = (f"stage 1 {name}: {index.count()} pool vectors embedded and indexed, "
                f"{section['splits'][split]['queries']} {split} queries, {time.perf_counter() - started:.0f} s "
                f"(embedder {embedder.id})")
        (out / "stage1" / f"{name}.txt").write_text(line + "\n")
        print(f"{line} -> {folder}", flush=True)
    return folders


def write_report(out: Path, runs: list[Run], report_dir: Path, title: str, command: str, m: int,
                 ids: set[str] | None = None) -> None:
    """Rewrite the report folder; paired statistics cover the examples in `ids` (this round's rows)."""
    from adaptrec_prompts.evaluation.report import bars, comparisons, load_run, runs_data, sweep, table, write_json

    done = {r.name: load_run(out / r.name) for r in runs if (out / r.name / "results.json").is_file()}
    if not done:
        return
    report_dir.mkdir(parents=True, exist_ok=True)
    ordered = list(done.values())
    text = f"### {title}\n\nGenerated by `{command}`.\n\n{table(ordered)}\n"
    bars(ordered, report_dir / "bars.png", title)
    text += "![bars](bars.png)\n"
    sweep_runs = [run for _, run in m_sweep(runs, done)]
    if len(sweep_runs) >= 2:
        refs = [done[k] for k in ("zero-shot", "popularity") if k in done]
        sweep(sweep_runs, "m_select", report_dir / "sweep.png", f"{title}: M sweep (static selection)", refs)
        text += "\n![M sweep](sweep.png)\n"
    stage1 = sorted((out / "stage1").glob("*.txt")) if (out / "stage1").is_dir() else []
    if stage1:
        text += "\nStage-1 comparison pools (built once, timed by this command):\n\n" + "".join(
            f"- {p.read_text()}" for p in stage1)
    claims_text, claims_json = claims_section(out, runs, done, m, ids)
    text += "\n" + claims_text
    write_json(report_dir / "claims.json", claims_json)
    write_json(report_dir / "runs.json", runs_data(ordered))
    if "zero-shot" in done:
        others = [out / r.name for r in runs if r.name in done and r.name != "zero-shot"]
        compare = comparisons(out / "zero-shot", others, ids)
        (report_dir / "compare.md").write_text(compare)
        text += "\n" + compare
    (report_dir / "table.md").write_text(text)


def m_sweep(runs: list[Run], done: dict) -> list[tuple[int, dict]]:
    """(M, finished run) of the static runs on the main neighbour folder, by M."""
    return sorted(((r.m, done[r.name]) for r in runs if r.name in done and r.program == "static"
                   and r.data == runs[0].data), key=lambda p: p[0])


def claims_section(out: Path, runs: list[Run], done: dict, m: int, ids: set[str] | None = None
                   ) -> tuple[str, list[dict]]:
    """The paper's claims as paired comparisons, plus the M sweep's shape and Stage-2 parse failures:
    (markdown, the comparisons as data)."""
    from adaptrec_prompts.evaluation.report import claims, claims_data, load_log

    pairs = [("demonstrations help", "zero-shot", f"static-m{m}"),
             ("demonstrations help", "zero-shot", f"random-m{m}"),
             ("retrieved users beat random users", f"random-m{m}", f"static-m{m}"),
             ("the embedding top M beat M of the top N at random", f"random-retrieved-m{m}", f"static-m{m}"),
             ("LLM selection (Stage 2) beats static", f"static-m{m}", f"adaptive-m{m}")]
    pools = [r.name for r in runs if r.data != runs[0].data]
    for a, b in zip(pools, pools[1:]):
        pairs.append(("the Stage-1 embedder matters (same pool)", a, b))
    if pools:
        pairs.append(("a sampled pool vs the full pool", f"static-m{m}", pools[0]))
    notes = {}
    if f"adaptive-m{m}" in done:
        log = list(load_log(out / f"adaptive-m{m}" / "predictions.jsonl", ids).values())
        sel = [r.get("selection") or {} for r in log]
        fallback = sum(1 for x in sel if x.get("fallback"))
        as_static = sum(1 for x in sel if x.get("indices") == list(range(len(x.get("indices") or []))))
        methods = "/".join(sorted({x.get("method") or "generate" for x in sel}))
        notes[f"adaptive-m{m}"] = (f" (Stage 2 by {methods}; unparsed, embedding order used: {fallback}/{len(log)}; "
                                   f"picked the embedding top M anyway: {as_static}/{len(log)})")
    data = claims_data(out, pairs, ids)
    text = "#### The paper's claims, paired on the same examples\n\n" + claims(out, pairs, notes, ids, data)
    sweep = m_sweep(runs, done)
    if len(sweep) >= 3:
        for key in ("HR@1", "NDCG@5"):
            values = [(mv, run["results"]["metrics"][key]["value"]) for mv, run in sweep]
            best = max(v for _, v in values)
            peaks = [mv for mv, v in values if v == best]
            inner = all(values[0][0] < p < values[-1][0] for p in peaks) and values[0][1] < best > values[-1][1]
            text += (f"\nM sweep, {key}: " + ", ".join(f"M={mv}: {v:.3f}" for mv, v in values)
                     + f"; peak at M={'/'.join(map(str, peaks))} ("
                     + ("interior: inverted-U shaped point estimates" if inner else "at an end: no inverted U")
                     + "; see the CIs in the table).\n")
    return text, data


def run_experiment(config: Experiment, command: str | None = None, *, config_file: str | Path | None = None,
                   progress: bool = True) -> None:
    """Run (or resume) the experiment in rounds of `config.chunk` examples, rewriting the report after each.

    Args:
        config: the experiment.
        command: how it was started, quoted in the report (default: a Python call).
        config_file: the file the settings were read from (`--config`), recorded in experiment.json.
        progress: a bar per variant and round (named after the variant: examples, rate, time left), and
            bars while Stage-1 pools are built (`--no-progress`; `progress.enabled` has the rule).

    Raises:
        IncompleteRunError: some variants ended with provider errors (the others finished; rerun to retry).
    """
    from adaptrec_prompts.backends.api import is_local, local_model_dir
    from adaptrec_prompts.data.prepare import load_manifest, load_prepared
    from adaptrec_prompts.data.schema import column
    from adaptrec_prompts.evaluation.results import format_results
    from adaptrec_prompts.evaluation.runs import RunConfig, load_lm, run_eval
    from adaptrec_prompts.utils.devices import resolve_device

    command = command or "adaptrec_prompts.experiments.run_experiment(...) (experiment.json holds the config)"
    if is_local(config.lm) or any(e != "collab" for e in config.embedders):
        resolve_device(config.device)  # a GPU torch cannot see: refused now, not after the baselines
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(config.data)
    if "neighbors" not in manifest:
        raise ConfigError(f"{config.data} has no neighbour columns; build them first: adaptrec index neighbors "
                          f"--data PREPARED --out {config.data} --splits {config.split}")
    example_ids = column(load_prepared(config.data)[config.split], "example_id")
    rows = len(example_ids)
    limit = min(config.limit or rows, rows)
    embedders = list(config.embedders)
    stage1 = {}
    embed_model = config.embed_model
    if embedders:
        if not config.prepared:
            raise ConfigError("--embedders needs --prepared DIR (the folder without neighbours that "
                              f"{config.data} was built from)")
        if embed_model is None and any(e != "collab" for e in embedders):
            embed_model = local_model_dir(config.lm)  # the lm embedder reads the --lm model's folder
        stage1 = stage1_folders(config.prepared, out, embedders, config.pool_size, config.split, config.n,
                                embed_model, progress=progress, device=config.device)
    runs = plan(config.data, list(config.variants), config.m, list(config.m_values), stage1)
    report_dir = Path(config.report) if config.report else out / "report"
    (out / "experiment.json").write_text(json.dumps(
        {"command": command, "runs": [r.__dict__ for r in runs], "limit": limit, "chunk": config.chunk,
         "config": asdict(config), "config_file": os.fspath(config_file) if config_file is not None else None},
        indent=2, default=str) + "\n")
    lm = None
    print(f"experiment: {len(runs)} runs x {limit} examples of {config.data} [{config.split}] in rounds of "
          f"{config.chunk}; report -> {report_dir}", flush=True)
    incomplete: dict[str, str] = {}
    for stop in list(range(config.chunk, limit, config.chunk)) + [limit]:
        started = time.perf_counter()
        for run in runs:
            run_config = RunConfig(data=run.data, out=str(out / run.name), split=config.split, program=run.program,
                                   lm=config.lm if run.uses_lm else None, mode=config.mode, n=config.n, m=run.m,
                                   seed=config.seed, limit=stop, max_new_tokens=config.max_new_tokens,
                                   device=config.device if run.uses_lm else "cpu")
            if run.uses_lm and lm is None:
                lm = load_lm(run_config, progress)  # one model for every variant
            try:
                results = run_eval(run_config, lm=lm if run.uses_lm else None, progress=progress)
            except IncompleteRunError as exc:  # keep the other variants going; the report shows `errors`
                incomplete[run.name] = str(exc)
                results = exc.results
            print(format_results(str(run_config.out), results), flush=True)
        write_report(out, runs, report_dir, config.title or f"{manifest['dataset']} {config.split}", command,
                     config.m, set(example_ids[:stop]))
        print(f"round to {stop} examples: {time.perf_counter() - started:.0f} s; report {report_dir / 'table.md'}",
              flush=True)
    if incomplete:
        raise IncompleteRunError(f"{len(incomplete)} variants ended with provider errors ("
                                 + "; ".join(f"{name}: {msg.split(';')[0]}" for name, msg in incomplete.items())
                                 + "); run the same command again to retry them")
