"""SFT rows rendered by the same DSPy adapter and signatures as inference (so prompts are identical).

A Stage-3 row is TRL's *conversational prompt-completion* format:
`{"prompt": [system, user], "completion": [assistant]}`, made by
`ChatAdapter.format_finetune_data(signature, demos, inputs, outputs)` on the program's own predictor
(its instructions and demos included), with the answer `<number>. <title>` of the target. The prompt
messages are exactly what `NextItemRecommender` sends at inference for the same example and selection
(tested byte for byte); the loss is on the completion only (TRL's default for this format).

Stage-2 rows (for training adaptive selection) use `stage2_label`, the one documented rule for which
pool users are "right": AdaptRec trains the selector implicitly through the recommender (the selector is
the model being trained; arXiv 2504.08786 §3.2-3.3, and the authors' code has no separate selection
loss). To supervise Stage 2 explicitly we rank pool users by how much their behaviour tells about the
target: next item == target (2 points), target in their history (1 point), then the overlap of their
history with the target user's history; ties keep embedding order. Training rows only: no leakage.
"""

from __future__ import annotations

from collections.abc import Sequence

from adaptrec_prompts.programs.adaptrec import AdaptRec, example_inputs


def select_indices(program: AdaptRec, row: dict) -> list[int]:
    """The demonstration indices (into `program.demonstration_pool`) inference would use for this row
    without an LM (none, static, random, random-retrieved; adaptive starts from embedding order and is
    re-selected by the self-adaptive callback)."""
    x = example_inputs(row)
    pool = program.demonstration_pool(x["neighbors"], x["random_users"])
    return program.preset_indices(len(pool), row["example_id"])


def stage3_row(program: AdaptRec, row: dict, indices: Sequence[int] | None = None) -> dict:
    """One conversational prompt-completion row for Stage 3."""
    x = example_inputs(row)
    pool = program.demonstration_pool(x["neighbors"], x["random_users"])
    chosen = select_indices(program, row) if indices is None else list(indices)
    rec = program.recommender
    inputs = rec.inputs(x["history_titles"], x["candidate_titles"], [pool[i] for i in chosen])
    number = row["candidate_item_ids"].index(row["target_item_id"]) + 1
    messages = rec.adapter().format_finetune_data(rec.recommend.signature, rec.recommend.demos, inputs,
                                                   {"answer": rec.answer_text(number, row["target_title"])})["messages"]
    return {"prompt": messages[:-1], "completion": messages[-1:], "example_id": row["example_id"]}


def listwise_row(program: AdaptRec, row: dict, indices: Sequence[int] | None = None) -> dict:
    """One row for the listwise loss: the Stage-3 prompt messages (as `stage3_row`), every candidate's answer
    as score mode scores it (`NextItemRecommender.completions`) and the target's 0-based list position."""
    x = example_inputs(row)
    pool = program.demonstration_pool(x["neighbors"], x["random_users"])
    chosen = select_indices(program, row) if indices is None else list(indices)
    rec = program.recommender
    adapter = rec.adapter()
    inputs = rec.inputs(x["history_titles"], x["candidate_titles"], [pool[i] for i in chosen])
    messages = adapter.format(signature=rec.recommend.signature, demos=rec.recommend.demos, inputs=inputs)
    return {"prompt": messages, "candidates": rec.completions(adapter, x["candidate_titles"]),
            "target_index": row["candidate_item_ids"].index(row["target_item_id"]), "example_id": row["example_id"]}


def stage2_label(row: dict, n: int, m: int) -> list[int]:
    """The Stage-2 supervision rule (module docstring): 0-based pool indices, best first, M of them."""
    target, history = row["target_item_id"], set(row["history_item_ids"])
    pool = list(zip(row["neighbor_next_item_ids"][:n], row["neighbor_history_item_ids"][:n], strict=True))

    def key(i: int) -> tuple:
        nxt, hist = pool[i]
        return (-(2 * (nxt == target) + (target in hist)), -len(history & set(hist)), i)

    return sorted(range(len(pool)), key=key)[:m]


def stage2_row(program: AdaptRec, row: dict) -> dict:
    """One conversational prompt-completion row for Stage 2 (labels from `stage2_label`)."""
    x = example_inputs(row)
    pool = program.demonstration_pool(x["neighbors"])
    m = min(program.m_select, len(pool))
    sel, template = program.selector.select, program.template
    inputs = {"user_history": template.render_history(x["history_titles"]),
              "candidate_users": template.render_pool([h for h, _ in pool]), "select_count": m}
    label = [i + 1 for i in stage2_label(row, program.n_retrieve, m)]
    messages = program.selector.adapter().format_finetune_data(sel.signature, sel.demos, inputs,
                                                   {"selected_users": label})["messages"]
    return {"prompt": messages[:-1], "completion": messages[-1:], "example_id": row["example_id"] + "/stage2"}


def build_rows(program: AdaptRec, rows: Sequence[dict], train_stage2: bool = False) -> list[dict]:
    """Stage-3 rows (and Stage-2 rows when `train_stage2`) for every training row."""
    out = [stage3_row(program, row) for row in rows]
    if train_stage2:
        out += [stage2_row(program, row) for row in rows]
    return out
