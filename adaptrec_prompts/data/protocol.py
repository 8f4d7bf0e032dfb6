"""The evaluation protocol (docs/design.md, Protocol): user split, example windows, frozen candidate sets.

- Each user's interactions are sorted by (time, item id): ties in time are broken by item id, so the
  order never depends on file order.
- Users are ordered by first interaction time (ties by user id) and split 8:1:1 into train, valid
  and test (`int(0.8 n)`, `int(0.1 n)`, the rest: 754/94/95 on MovieLens-100K, as LLaRA).
- train: every window of a training user (history = up to `history_len` items before position t,
  target = item t) with at least `min_history` history items. valid/test: the last window of each
  held-out user. test_extended: every window of the test users, once per candidate seed.
- Candidates: K - 1 items drawn uniformly from the items the user never interacted with (their full
  sequence, future included), plus the target, shuffled. The draw for (seed, user, position) comes
  from its own generator seeded by those keys, so it does not depend on processing order, and the
  test row of a user equals that user's last test_extended row with the first seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from adaptrec_prompts.data.interactions import Interactions
from adaptrec_prompts.errors import ConfigError, DataError


@dataclass(frozen=True)
class ProtocolConfig:
    """Parameters of the protocol; all of them are written into the manifest.

    Attributes:
        history_len: the most history items an example shows (10 in the paper).
        min_history: examples with fewer history items are dropped (3, as LLaRA).
        k_candidates: candidate set size K, target included (20).
        split_ratios: train/valid/test user fractions (0.8, 0.1, 0.1).
        seed: candidate-sampling seed.
        extended_seeds: how many candidate seeds test_extended uses (seed, seed + 1, ...).
    """

    history_len: int = 10
    min_history: int = 3
    k_candidates: int = 20
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    extended_seeds: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.min_history <= self.history_len:
            raise ConfigError(f"need 1 <= min_history <= history_len, got {self.min_history}, {self.history_len}")
        if self.k_candidates < 2:
            raise ConfigError(f"k_candidates must be >= 2, got {self.k_candidates}")
        if len(self.split_ratios) != 3 or abs(sum(self.split_ratios) - 1) > 1e-9:
            raise ConfigError(f"split_ratios must be three fractions summing to 1, got {self.split_ratios}")
        if self.extended_seeds < 1:
            raise ConfigError(f"extended_seeds must be >= 1, got {self.extended_seeds}")
        from adaptrec_prompts.utils.options import check_number

        for name, low in (("history_len", 1), ("min_history", 1), ("k_candidates", 2), ("seed", 0),
                          ("extended_seeds", 1)):  # types too (a config value "10" must not compare as text)
            check_number(f"{name} (--{name.replace('_', '-')})", getattr(self, name), low=low)

    def to_dict(self) -> dict:
        return asdict(self)


def stable_int(key: str | int) -> int:
    """A 64-bit integer from sha256 of `key`: the same on every machine and Python (unlike hash())."""
    return int.from_bytes(hashlib.sha256(str(key).encode()).digest()[:8], "little")


def example_rng(seed: int, *keys: str | int) -> np.random.Generator:
    """A generator for one example, derived from the seed and the example's keys."""
    return np.random.default_rng(np.random.SeedSequence([seed, *(stable_int(k) for k in keys)]))


def draw_candidates(rng: np.random.Generator, target: int, exclude: set[int], universe: np.ndarray,
                    k: int) -> list[int]:
    """K candidate ids: the target plus K-1 distinct items outside `exclude`, shuffled.

    Raises:
        DataError: fewer than K-1 items are left to draw from.
    """
    need = k - 1
    free = universe.size - len(exclude) - (target not in exclude)
    if free < need:
        raise DataError(f"cannot draw {need} negative candidates: only {free} items are outside the user's "
                        "history; lower --k-candidates")
    picked: list[int] = []
    chosen: set[int] = set()
    while len(picked) < need:
        for index in rng.integers(0, universe.size, size=2 * need).tolist():
            item = int(universe[index])
            if item != target and item not in exclude and item not in chosen:
                chosen.add(item)
                picked.append(item)
                if len(picked) == need:
                    break
    candidates = picked + [target]
    rng.shuffle(candidates)
    return candidates


def example_row(example_id: str, split: str, user: str | None, position: int | None, history: list[int],
                target: int, candidates: list[int], seed: int, titles: dict[int, str], timestamp: int | None) -> dict:
    """One example in the schema of `schema.EXAMPLE_FEATURES` (ids plus rendered-ready titles)."""
    return {
        "example_id": example_id, "split": split, "user_id": user, "position": position,
        "history_item_ids": history, "target_item_id": target, "candidate_item_ids": candidates,
        "candidate_seed": seed, "history_titles": [titles[i] for i in history], "target_title": titles[target],
        "candidate_titles": [titles[i] for i in candidates], "timestamp": timestamp,
    }


def user_sequences(inter: Interactions) -> dict[str, tuple[list[int], list[int]]]:
    """Per user: (item ids, timestamps), sorted by (time, item id)."""
    order = np.lexsort((inter.item_ids, inter.timestamps))
    seqs: dict[str, tuple[list[int], list[int]]] = {}
    for row in order:
        items, times = seqs.setdefault(inter.user_ids[row], ([], []))
        items.append(int(inter.item_ids[row]))
        times.append(int(inter.timestamps[row]))
    return seqs


def _user_key(user: str) -> tuple[int, int | str]:
    return (0, int(user)) if user.isdigit() else (1, user)


def split_users(seqs: dict[str, tuple[list[int], list[int]]], ratios: Sequence[float]) -> dict[str, list[str]]:
    """Order users by first interaction time (ties by id) and cut train/valid/test by `ratios`."""
    users = sorted(seqs, key=lambda u: (seqs[u][1][0], _user_key(u)))
    n_train = int(ratios[0] * len(users))
    n_valid = int(ratios[1] * len(users))
    return {
        "train": users[:n_train],
        "valid": users[n_train : n_train + n_valid],
        "test": users[n_train + n_valid :],
    }


def build_examples(inter: Interactions, config: ProtocolConfig) -> dict[str, list[dict]]:
    """Turn interactions into example rows per split (see the module docstring for the rules)."""
    seqs = user_sequences(inter)
    users = split_users(seqs, config.split_ratios)
    universe = np.unique(inter.item_ids)
    titles = inter.titles
    k = config.k_candidates

    seen_items = {user: set(items) for user, (items, _times) in seqs.items()}

    def row(split: str, user: str, t: int, seed: int) -> dict:
        items, times = seqs[user]
        history = items[max(0, t - config.history_len) : t]
        candidates = draw_candidates(example_rng(seed, user, t), items[t], seen_items[user], universe, k)
        example_id = f"{split}/{user}/{t}" + (f"/s{seed}" if split == "test_extended" else "")
        return example_row(example_id, split, user, t, history, items[t], candidates, seed, titles, times[t])

    out: dict[str, list[dict]] = {"train": [], "valid": [], "test": [], "test_extended": []}
    for user in users["train"]:
        out["train"].extend(row("train", user, t, config.seed)
                            for t in range(config.min_history, len(seqs[user][0])))
    for split in ("valid", "test"):
        for user in users[split]:
            last = len(seqs[user][0]) - 1
            if last >= config.min_history:
                out[split].append(row(split, user, last, config.seed))
    for offset in range(config.extended_seeds):
        for user in users["test"]:
            out["test_extended"].extend(row("test_extended", user, t, config.seed + offset)
                                        for t in range(config.min_history, len(seqs[user][0])))
    return out
