"""`baseline:demo-match`: the no-LM reading of the AdaptRec prompt itself.

The users an AdaptRec program shows for a row (the same N, M, selection and `demo_items`: the
`AdaptRec.demonstration_pool` and `preset_indices` the program uses) vote for the candidates they were
shown with: `next_weight` for a user whose next item is the candidate, `history_weight` for a user whose
shown history holds it (each user once per candidate and role). Candidates are ranked by votes, then by
training popularity, then by item id. It is the floor a model that reads the demonstrations must clear,
as UserKNN is the no-LM reading of all N neighbours: every vote is a string the prompt shows.

`demo_exposure(row, ...)` says where a row's target is shown ("next", "history" or None): the split the
fine-tuning reports use to tell whether a model learned to read the demonstrations (docs/design.md,
Fine-tuning objectives).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from adaptrec_prompts.errors import ConfigError

SELECTIONS = ("static", "random", "random-retrieved")


def _program(selection: str, n_retrieve: int, m_select: int, demo_items: int | None, seed: int):
    """An AdaptRec with the selection settings (its pool and preset indices are the program's own rule)."""
    from adaptrec_prompts.data.render import load_template
    from adaptrec_prompts.programs.adaptrec import AdaptRec

    if selection not in SELECTIONS:
        raise ConfigError(f"baseline:demo-match reads the users a program shows without an LM: selection must be "
                          f"one of {SELECTIONS}, got {selection!r} (adaptive selection needs the LM; 'none' shows "
                          "no user)")
    return AdaptRec(load_template("movies"), selection=selection, n_retrieve=n_retrieve, m_select=m_select,
                    demo_items=demo_items, seed=seed)


def shown_users(program, row: dict) -> list[tuple[list[int], int]]:
    """(history item ids as shown, next item id) of the users `program` shows for `row`, in prompt order."""
    prefix = "random_" if program.selection == "random" else "neighbor_"
    if f"{prefix}next_item_ids" not in row:
        raise ConfigError(f"baseline:demo-match needs the Stage-1 columns {prefix}*: run `adaptrec index neighbors` "
                          "on the data first")
    users = list(zip(row[f"{prefix}history_item_ids"], row[f"{prefix}next_item_ids"], strict=True))
    if not users:  # a split `adaptrec index neighbors` did not query: its columns are empty lists
        raise ConfigError(f"example {row['example_id']} has no Stage-1 users in {prefix}*: its split was not queried; "
                          "run `adaptrec index neighbors --splits` with this split (the AdaptRec program refuses it too)")
    pool = program.demonstration_pool(users, users)
    return [(list(pool[i][0]), pool[i][1]) for i in program.preset_indices(len(pool), row["example_id"])]


def demo_exposure(row: dict, selection: str = "static", n_retrieve: int = 10, m_select: int = 5,
                  demo_items: int | None = None, seed: int = 0, program=None) -> str | None:
    """Where the target of `row` is shown by the demonstrations: "next" (a shown user chose it next),
    "history" (only in a shown history) or None (not shown)."""
    program = program or _program(selection, n_retrieve, m_select, demo_items, seed)
    users = shown_users(program, row)
    target = row["target_item_id"]
    if any(nxt == target for _, nxt in users):
        return "next"
    if any(target in hist for hist, _ in users):
        return "history"
    return None


class DemoMatchBaseline:
    """Candidates ranked by the votes of the users the AdaptRec prompt shows (module docstring).

    Args:
        sequences: training sequences (item ids), for the popularity tie-break.
        selection, n_retrieve, m_select, demo_items, seed: the AdaptRec program's settings.
        next_weight, history_weight: a shown user's vote for the item they chose next, and for an item of
            their shown history (next above history).
    """

    def __init__(self, sequences: Sequence[Sequence[int]], selection: str = "static", n_retrieve: int = 10,
                 m_select: int = 5, demo_items: int | None = None, seed: int = 0, next_weight: float = 1.0,
                 history_weight: float = 0.5):
        if not next_weight > history_weight >= 0:
            raise ConfigError(f"demo-match weights must satisfy next_weight > history_weight >= 0, got "
                              f"{next_weight} and {history_weight}")
        self.program = _program(selection, n_retrieve, m_select, demo_items, seed)
        self.popularity = Counter(i for seq in sequences for i in seq)
        self.next_weight, self.history_weight = next_weight, history_weight

    def config(self) -> dict:
        p = self.program
        return {"name": "demo-match", "selection": p.selection, "n_retrieve": p.n_retrieve, "m_select": p.m_select,
                "demo_items": p.demo_items, "seed": p.seed, "next_weight": self.next_weight,
                "history_weight": self.history_weight}

    def votes(self, row: dict) -> Counter:
        """Candidate item id -> votes from the shown users."""
        votes: Counter = Counter()
        for hist, nxt in shown_users(self.program, row):
            votes[nxt] += self.next_weight
            for item in set(hist):
                votes[item] += self.history_weight
        return votes

    def predict_row(self, row: dict) -> dict:
        votes = self.votes(row)
        ranked = sorted(row["candidate_item_ids"], key=lambda i: (-votes.get(i, 0.0), -self.popularity.get(i, 0), i))
        return {"raw": None, "answer": None, "ranking": ranked, "valid": True, "reason": "", "selection": None}
