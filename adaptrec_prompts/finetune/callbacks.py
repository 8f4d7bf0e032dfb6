"""Trainer callbacks of AdaptRec fine-tuning (needs the `finetune` extra).

- `ChoiceDiagnostics`: scores a fixed slice of validation rows (and of the training rows) in score mode
  before training and every few steps: the choice NLL against ln K, HR@1, and HR@1 split by whether the
  demonstrations show the target (`baselines.demo_match.demo_exposure`).
- `SelfAdaptiveSelection`: the paper's self-adaptive selection: the model being trained re-selects the
  demonstrations of the upcoming rows (Stage 2 in score mode); `LiveStream` is that training stream as a
  `datasets` generator.
- `timed_checkpoints`: a checkpoint whenever some minutes have passed.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

from adaptrec_prompts.errors import ConfigError


def timed_checkpoints(minutes: float):
    """A TrainerCallback that asks the trainer to save a checkpoint whenever `minutes` have passed since the
    last one (or the start): a run killed at any point loses at most that much work."""
    import time

    from transformers import TrainerCallback

    class TimedCheckpoints(TrainerCallback):
        def __init__(self):
            self.last = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() - self.last >= minutes * 60:
                control.should_save = True
            return control

        def on_save(self, args, state, control, **kwargs):
            self.last = time.monotonic()
            return control

    return TimedCheckpoints()


class ChoiceDiagnostics(TrainerCallback):
    """Is the choice being learned? Before training, every `every_steps` steps and at the end, score each
    slice's rows (e.g. 32 validation users, 16 training rows) in score mode with the model being trained, and
    append one record per slice to `path` (JSON Lines): the choice NLL (cross-entropy of the target among the
    K candidates' scores; chance is ln K), HR@1, where the top-1s sit in the list, and HR@1 split by whether
    the shown similar users' next items or histories hold the target (`exposure`, fixed per row by the
    static program of the same N, M and demo items, so every variant is split on the same rows).

    The demonstrations are the ones the program would show: its preset selection, or for adaptive
    selection `select(model, tokenizer, row)` (the model's own Stage-2 choice, as at inference). Each record
    has the seconds it took (they are part of the trainer's runtime). A resumed run keeps its records and
    does not repeat a (step, slice) already recorded; a file written for other rows or settings (the
    identity in `<path>.identity.json`) is refused, never overwritten.
    """

    def __init__(self, program, slices: dict[str, list[dict]], exposure: dict[str, str | None], path,
                 every_steps: int, prompt_format: str = "auto", select=None, identity: dict | None = None):
        import math

        self.program, self.slices, self.exposure = program, slices, exposure
        self.path, self.every_steps, self.prompt_format = Path(path), every_steps, prompt_format
        self.select = select
        self.ln = math.log
        wanted = {"slices": {name: [r["example_id"] for r in rows] for name, rows in slices.items()},
                  **(identity or {})}
        id_path = self.path.with_name(self.path.name + ".identity.json")
        if id_path.is_file() and json.loads(id_path.read_text()) != wanted:
            raise ConfigError(f"{self.path} holds choice diagnostics of other rows or settings ({id_path}); use another "
                              "output_dir, or delete both files to start the diagnostics over")
        if not id_path.is_file():  # a new file (or one from before identities were written: kept)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            id_path.write_text(json.dumps(wanted) + "\n")
        self.records = self.read(self.path)

    @staticmethod
    def read(path) -> list[dict]:
        """The records of a diagnostics file, one per (step, slice) (the last written), in step order."""
        path = Path(path)
        if not path.is_file():
            return []
        last = {}
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                last[(record["step"], record["slice"])] = record
        return sorted(last.values(), key=lambda r: (r["step"], r["slice"]))

    def measure(self, model, tokenizer, step: int) -> list[dict]:
        """Score every slice not yet recorded at `step` (model in eval mode, no gradients) and record it."""
        import time

        import numpy as np
        import torch

        from adaptrec_prompts.backends.hf import HFEngine
        from adaptrec_prompts.finetune.rows import listwise_row

        done = {(r["step"], r["slice"]) for r in self.records}
        todo = {name: rows for name, rows in self.slices.items() if (step, name) not in done}
        if not todo:
            return []
        engine = HFEngine(model, tokenizer, prompt_format=self.prompt_format)
        was_training = model.training
        model.eval()
        new = []
        try:
            with torch.no_grad():
                for name, rows in todo.items():
                    started = time.perf_counter()
                    nll, hits, tops, shown_hits, hidden_hits = [], [], [], [], []
                    for row in rows:
                        indices = self.select(model, tokenizer, row) if self.select is not None else None
                        item = listwise_row(self.program, row, indices)
                        scores = np.array(engine.score(item["prompt"], item["candidates"]), dtype=float)
                        logp = scores - scores.max() - np.log(np.exp(scores - scores.max()).sum())
                        top = int(np.argmax(scores))  # ties: list order, as ranking_from_scores
                        hit = top == item["target_index"]
                        nll.append(-float(logp[item["target_index"]]))
                        hits.append(hit)
                        tops.append(top + 1)
                        (shown_hits if self.exposure.get(row["example_id"]) else hidden_hits).append(hit)
                    position, count = max(((p, tops.count(p)) for p in set(tops)), key=lambda x: (x[1], -x[0]))
                    k = len(rows[0]["candidate_item_ids"])
                    new.append({"step": step, "slice": name, "n": len(rows), "k": k,
                                "choice_nll": float(np.mean(nll)), "ln_k": self.ln(k), "hr1": float(np.mean(hits)),
                                "hr1_target_shown": float(np.mean(shown_hits)) if shown_hits else None,
                                "n_target_shown": len(shown_hits),
                                "hr1_target_not_shown": float(np.mean(hidden_hits)) if hidden_hits else None,
                                "n_target_not_shown": len(hidden_hits),
                                "top1_position": position, "top1_position_share": count / len(rows),
                                "seconds": round(time.perf_counter() - started, 1)})
        finally:
            model.train(was_training)
        with open(self.path, "a") as handle:
            for record in new:
                handle.write(json.dumps(record) + "\n")
        self.records = sorted(self.records + new, key=lambda r: (r["step"], r["slice"]))
        for r in new:
            print(f"choice diagnostics step {step} {r['slice']}: NLL {r['choice_nll']:.3f} (ln K {r['ln_k']:.3f}), "
                  f"HR@1 {r['hr1']:.3f}, top-1 #{r['top1_position']} on {r['top1_position_share']:.0%} "
                  f"({r['seconds']:.0f} s)", flush=True)
        return new

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self.measure(model, processing_class, state.global_step)
        return control

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.every_steps and state.global_step % self.every_steps == 0:
            self.measure(model, processing_class, state.global_step)
        return control

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        self.measure(model, processing_class, state.global_step)
        return control


class SelfAdaptiveSelection(TrainerCallback):
    """Trainer callback: every `refresh_steps` steps, the model being trained re-selects the demonstrations
    of the next `window` training rows of the stream (Stage 2 in score mode), and the changes are counted.

    It is built before the trainer and reads the live model and tokenizer from the callback kwargs.
    """

    # A plain object holding rows and selections; TrainerCallback has no __init__ to call.

    def __init__(self, program, rows: list[dict], refresh_steps: int, window: int, seed: int = 0,
                 prompt_format: str = "auto", render=None):
        import numpy as np

        from adaptrec_prompts.finetune.rows import select_indices

        self.program, self.rows, self.refresh_steps, self.window = program, rows, refresh_steps, window
        self.prompt_format = prompt_format
        self.render = render  # program, row, indices -> a training row (default: rows.stage3_row)
        self.indices = {r["example_id"]: select_indices(program, r) for r in rows}
        self.order = np.random.default_rng(seed).permutation(len(rows)).tolist()
        self.cursor = 0
        self.history: list[dict] = []

    # The stream the trainer consumes: rows in a seeded order, rendered with the *current* selection.
    def stream(self, tokenize):
        from adaptrec_prompts.finetune.rows import stage3_row

        render = self.render or stage3_row
        epoch = 0
        while True:
            for pos, i in enumerate(self.order):
                self.cursor = pos
                row = self.rows[i]
                yield tokenize(render(self.program, row, self.indices[row["example_id"]]))
            epoch += 1

    def select_with_model(self, model, tokenizer, row: dict) -> list[int]:
        """Rank the pool users by log p(answer names user i first | Stage-2 prompt); keep the top M (the
        same rule as `UserSelector` in score mode)."""
        import torch

        from adaptrec_prompts.backends.hf import HFEngine
        from adaptrec_prompts.programs.adaptrec import example_inputs
        from adaptrec_prompts.programs.selector import stage2_completions, top_m_by_score

        x = example_inputs(row)
        pool = self.program.demonstration_pool(x["neighbors"])
        m = min(self.program.m_select, len(pool))
        selector = self.program.selector
        messages = selector.adapter().format(selector.select.signature, selector.select.demos,
                                         selector.inputs(x["history_titles"], [h for h, _ in pool], m))
        completions = stage2_completions(len(pool), m)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                scores = HFEngine(model, tokenizer, prompt_format=self.prompt_format).score(messages, completions)
        finally:
            model.train(was_training)
        return top_m_by_score(scores, m)

    STATE_FILE = "adaptrec_selection.json"

    def on_save(self, args, state, control, **kwargs):
        """Save the current selections and history beside the checkpoint, so a resumed run continues them."""
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            (folder / self.STATE_FILE).write_text(json.dumps({"indices": self.indices, "history": self.history}))
        return control

    def load(self, checkpoint: str) -> bool:
        """Restore the selections saved with `checkpoint` (False when it has none)."""
        path = Path(checkpoint) / self.STATE_FILE
        if not path.is_file():
            return False
        saved = json.loads(path.read_text())
        self.indices.update(saved["indices"])
        self.history = saved["history"]
        return True

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not self.refresh_steps or state.global_step % self.refresh_steps:
            return control
        upcoming = [self.order[(self.cursor + 1 + k) % len(self.order)] for k in range(self.window)]
        changed = 0
        for i in upcoming:
            row = self.rows[i]
            new = self.select_with_model(model, processing_class, row)
            changed += new != sorted(self.indices[row["example_id"]])
            self.indices[row["example_id"]] = new
        self.history.append({"step": state.global_step, "reselected": len(upcoming), "changed": changed})
        return control


class LiveStream:
    """The adaptive training stream as a generator function for `datasets.IterableDataset.from_generator`.

    datasets fingerprints a generator by pickling it; the program it renders with need not pickle (a
    signature built at run time, e.g. lettered labels or compiled instructions, does not), and the stream is
    only ever read in this process. So it pickles as its fingerprint: the program, the rows, the order and
    the refresh settings (the tokenizer is left out: a streaming dataset writes no cache, so the hash only
    names the builder's config); unpickling it elsewhere is an error, not a copy of stale selections. An
    in-process copy (`copy.copy`, `copy.deepcopy`, as `interleave_datasets` does) is the same stream."""

    def __init__(self, adaptive: SelfAdaptiveSelection, tokenize):
        self.adaptive, self.tokenize = adaptive, tokenize

    def __call__(self):
        yield from self.adaptive.stream(self.tokenize)

    def fingerprint(self) -> str:
        from adaptrec_prompts.evaluation.harness import _sha, program_state

        a = self.adaptive
        return _sha({"program": program_state(a.program), "rows": [r["example_id"] for r in a.rows],
                     "order": a.order, "refresh_steps": a.refresh_steps, "window": a.window,
                     "prompt_format": a.prompt_format,
                     **({"render": a.render.__name__} if a.render is not None else {})})

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        return _live_stream_elsewhere, (self.fingerprint(),)


def _live_stream_elsewhere(fingerprint: str):
    raise RuntimeError(f"the adaptive training stream {fingerprint[:12]} was sent to another process; it reads "
                       "selections that only the training process updates (use dataloader_num_workers=0)")
