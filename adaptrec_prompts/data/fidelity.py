"""How our raw MovieLens protocol relates to LLaRA's released valid/test rows.

LLaRA's rows carry (item, rating) pairs but no user id. A row is matched to the unique user whose
ratings contain all of its pairs; then we ask (1) is that user held out in the same split by our
rule, (2) is the row exactly our example for that user (last item as target, the 10 before it as
history), (3) is the row's target at least one of the user's items at their last timestamp (i.e.
"the last item" under *some* order of same-second ratings), and (4) could the whole row be the user's
last 11 items under some order of same-second ratings.
"""

from __future__ import annotations

from pathlib import Path

from adaptrec_prompts.data._io import iter_lines, require_file, require_folder
from adaptrec_prompts.data.llara import load_llara
from adaptrec_prompts.data.movielens import LAYOUT, load_movielens
from adaptrec_prompts.data.protocol import ProtocolConfig, split_users, user_sequences


def compare_llara_movielens(raw_dir: str | Path, llara_dir: str | Path,
                            config: ProtocolConfig | None = None) -> dict:
    """Return match counts per LLaRA split (see module docstring)."""
    config = config or ProtocolConfig()
    folder = require_folder(raw_dir, LAYOUT)
    inter = load_movielens(folder)
    seqs = user_sequences(inter)
    users = split_users(seqs, config.split_ratios)
    user_split = {u: split for split, us in users.items() for u in us}
    ratings: dict[str, dict[int, int]] = {}
    for _lineno, line in iter_lines(require_file(folder, "u.data", LAYOUT), encoding="latin-1"):
        user, item, rating, _ts = line.split("\t")
        ratings.setdefault(user, {})[int(item)] = int(rating)
    rows_by_split, _titles, _sources, _notes = load_llara(llara_dir, folder / "u.item")
    report: dict[str, dict[str, int]] = {}
    for split, rows in rows_by_split.items():
        counts = {"rows": len(rows), "matched_one_user": 0, "user_in_same_split": 0,
                  "exact_row": 0, "target_at_last_timestamp": 0, "consistent_any_tie_order": 0}
        for row in rows:
            pairs = list(zip(row.history + [row.target], row.ratings or [], strict=True))
            owners = [u for u, r in ratings.items() if all(r.get(i) == v for i, v in pairs)]
            if len(owners) != 1:
                continue
            user = owners[0]
            counts["matched_one_user"] += 1
            counts["user_in_same_split"] += user_split.get(user) == split
            items, times = seqs[user]
            last = len(items) - 1
            history = items[max(0, last - config.history_len) : last]
            counts["exact_row"] += history == row.history and items[last] == row.target
            last_items = {i for i, t in zip(items, times, strict=True) if t == times[-1]}
            counts["target_at_last_timestamp"] += row.target in last_items
            counts["consistent_any_tie_order"] += _consistent(items, times, row.history + [row.target])
        report[split] = counts
    return report


def _consistent(items: list[int], times: list[int], row: list[int]) -> bool:
    """Could `row` be the user's last len(row) items under some order of same-second ratings?"""
    when = dict(zip(items, times, strict=True))
    row_times = [when[i] for i in row]
    if row_times != sorted(row_times) or row_times[-1] != times[-1]:
        return False
    first = row_times[0]
    outside = [when[i] for i in items if i not in set(row)]
    return all(t <= first for t in outside)
