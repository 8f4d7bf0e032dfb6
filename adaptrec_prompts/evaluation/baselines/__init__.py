"""Classical baselines the harness scores like any program: `predict_row(row)` -> ranking of all K.

- `RandomBaseline`: a seeded random order per example.
- `PopularityBaseline`: candidates by how often they occur in the training sequences.
- `UserKNNBaseline`: the no-LLM version of AdaptRec's collaborative signal: each Stage-1 neighbour votes
  with its cosine similarity for its next item (weight 1) and for the items of its history (weight
  `history_weight`); candidates are ranked by votes, then popularity.
- `SASRecBaseline` (`baselines.sasrec`, needs torch): a small self-attentive sequential model.
- `DemoMatchBaseline` (`baselines.demo_match`): the no-LLM reading of the AdaptRec prompt: the M users the
  program shows vote for the candidates they chose next or show in their histories.
"""

from __future__ import annotations

from collections import Counter

from adaptrec_prompts.data.protocol import example_rng
from adaptrec_prompts.errors import ConfigError


def _full(ranked: list[int]) -> dict:
    return {"raw": None, "answer": None, "ranking": ranked, "valid": True, "reason": "", "selection": None}


class RandomBaseline:
    def __init__(self, seed: int = 0):
        from adaptrec_prompts.utils.options import check_number

        check_number("seed (--seed)", seed, low=0)
        self.seed = seed

    def config(self) -> dict:
        return {"name": "random", "seed": self.seed}

    def predict_row(self, row: dict) -> dict:
        rng = example_rng(self.seed, "random-baseline", row["example_id"])
        return _full([row["candidate_item_ids"][i] for i in rng.permutation(len(row["candidate_item_ids"]))])


class PopularityBaseline:
    def __init__(self, sequences: list[list[int]]):
        self.counts = Counter(i for seq in sequences for i in seq)

    def config(self) -> dict:
        return {"name": "popularity", "training_interactions": sum(self.counts.values())}

    def predict_row(self, row: dict) -> dict:
        return _full(sorted(row["candidate_item_ids"], key=lambda i: (-self.counts.get(i, 0), i)))


class UserKNNBaseline:
    def __init__(self, sequences: list[list[int]], n_retrieve: int = 10, history_weight: float = 0.1):
        from adaptrec_prompts.utils.options import check_number

        # n <= 0 would slice the neighbour lists to nothing (Popularity's ranking) or from the end (--n -5)
        check_number("n_retrieve (--n)", n_retrieve, low=1, hint="the neighbours UserKNN votes with")
        check_number("history_weight", history_weight, low=0, integer=False)
        self.popularity = Counter(i for seq in sequences for i in seq)
        self.n_retrieve, self.history_weight = n_retrieve, history_weight

    def config(self) -> dict:
        return {"name": "userknn", "n_retrieve": self.n_retrieve, "history_weight": self.history_weight}

    def predict_row(self, row: dict) -> dict:
        if "neighbor_next_item_ids" not in row:
            raise ConfigError("UserKNN needs Stage-1 neighbours: run `adaptrec index neighbors` on the data first")
        votes: Counter = Counter()
        n = self.n_retrieve
        for sim, nxt, hist in zip(row["neighbor_scores"][:n], row["neighbor_next_item_ids"][:n],
                                  row["neighbor_history_item_ids"][:n], strict=True):
            votes[nxt] += sim
            for item in set(hist):
                votes[item] += self.history_weight * sim
        ranked = sorted(row["candidate_item_ids"], key=lambda i: (-votes.get(i, 0.0), -self.popularity.get(i, 0), i))
        return _full(ranked)
