"""AdaptRec (Stage 1 -> 2 -> 3) as a DSPy module, and its live form.

`AdaptRec` runs Stage 2 (`selector.UserSelector`) and Stage 3 (`recommender.NextItemRecommender`) on
Stage-1 neighbours that arrive as inputs, in embedding order (a prepared row's neighbour columns:
`example_inputs`). Modules hold predictors and plain config only (a `Template`, strings, ints): no clients,
models or files, so DSPy optimizers can deep-copy them; programs are saved as JSON (`saving`).

The one exception to "neighbours arrive as inputs" is `AdaptRec.from_index`: a `LiveAdaptRec` retrieves them
per call with a `retrieval.live.UserRetriever`, which it holds as a non-parameter attribute that deep copies
share, and saves exactly like the plain program (config and DSPy state, never the index or a client); to serve
a saved program live, bind an index again with `AdaptRec.from_index(index, program=load_program(path))`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import dspy

from adaptrec_prompts.data.protocol import example_rng
from adaptrec_prompts.data.render import Template, as_template, check_titles, load_template_obj, manifest_template
from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.programs.chat_adapters import check_prompt
from adaptrec_prompts.programs.recommender import SCORE_ORDERS, NextItemRecommender
from adaptrec_prompts.programs.selector import UserSelector
from adaptrec_prompts.retrieval.index import NEW_USER, NewUser, check_user_id
from adaptrec_prompts.utils.options import check_number

if TYPE_CHECKING:
    from adaptrec_prompts.retrieval.index import UserIndex
    from adaptrec_prompts.retrieval.live import UserRetriever

logger = logging.getLogger(__name__)

# "random": M users drawn from the whole Stage-1 pool (the paper's control; persisted by `index neighbors`);
# "random-retrieved": M of the N retrieved users drawn at random (a shuffle of the retrieved, not a control).
SELECTIONS = ("none", "random", "random-retrieved", "static", "adaptive")


class AdaptRec(dspy.Module):
    """The full method: Stage-1 neighbours (inputs) -> Stage-2 selection -> Stage-3 recommendation.

    Args:
        template: domain wording: a `Template`, a domain name ("movies", "music", "books") or a .toml path.
        selection: "none" (zero-shot, no demonstrations), "random" (M users drawn at random from the whole
            Stage-1 pool under the same exclusion rules: the row's persisted `random_*` columns, seeded per
            example), "random-retrieved" (M of the N retrieved users, drawn with a generator seeded by
            (seed, example id)), "static" (the first M in embedding order) or "adaptive" (the LM selects).
        n_retrieve: N, how many Stage-1 neighbours are considered.
        m_select: M, how many similar users Stage 3 sees.
        mode: "generate", "score", "score-calibrated" or "score-permuted" (Stage 3; see
            `NextItemRecommender`).
        orders: list orders averaged in "score-permuted" mode.
        prompt: "full" (DSPy's ChatAdapter) or "compact" (`chat_adapters.CompactAdapter`: the instructions as the
            system message, no field boilerplate; for base models and cheap fine-tuning).
        demo_items: show only each similar user's last `demo_items` history items (None: all of them).
        labels: "numbers", "letters" or "titles", how Stage-3 candidates are labelled and answered (see
            `NextItemRecommender`).
        seed: seed of the random selection.
        stage2: how the adaptive selection asks the LM: "generate" (it writes the list), "score" (top M
            by the likelihood of opening the list; local engines) or "auto" (score when `mode` is "score"
            and the engine can score, else generate).

    Example:
        >>> program = AdaptRec(load_template("movies"), selection="static", m_select=5)  # doctest: +SKIP
        >>> program(**example_inputs(row)).ranking  # doctest: +SKIP
    """

    def __init__(self, template: Template | str, selection: str = "static", n_retrieve: int = 10, m_select: int = 5,
                 mode: str = "generate", seed: int = 0, stage2: str = "auto", orders: int = SCORE_ORDERS,
                 prompt: str = "full", demo_items: int | None = None, labels: str = "numbers"):
        super().__init__()
        template = as_template(template, type(self).__name__)
        if selection not in SELECTIONS:
            raise ConfigError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        check_number("n_retrieve (--n)", n_retrieve, low=1)
        check_number("m_select (--m)", m_select, low=1)
        check_number("seed (--seed)", seed, low=0)
        check_number("orders", orders, low=1)
        if demo_items is not None:
            check_number("demo_items (--demo-items)", demo_items, low=1, hint="or None for whole histories")
        if not 1 <= m_select <= n_retrieve:
            raise ConfigError(f"m_select (--m) must be between 1 and n_retrieve (--n) = {n_retrieve}, got {m_select}: "
                              "the M demonstrations are chosen among the N retrieved users; lower --m or raise --n")
        self.template = template
        self.selection = selection
        self.n_retrieve = n_retrieve
        self.m_select = m_select
        self.mode = mode
        self.seed = seed
        self.stage2 = stage2
        # "auto" scores Stage 2 only in a score-mode program (a generate-mode program generates both stages);
        # UserSelector validates the value
        self.orders = orders
        self.prompt = check_prompt(prompt)
        if demo_items is not None and demo_items < 1:
            raise ConfigError(f"demo_items must be >= 1 (or None for whole histories), got {demo_items}")
        self.demo_items = demo_items
        self.selector = UserSelector(template, m_select, prompt=prompt,
                                     mode="generate" if stage2 == "auto" and mode == "generate" else stage2)
        self.recommender = NextItemRecommender(template, mode=mode, zero_shot=selection == "none", orders=orders,
                                               prompt=prompt, labels=labels)
        self.labels = labels

    @classmethod
    def from_index(cls, index, template: Template | str | None = None, *, program: AdaptRec | None = None,
                   overfetch: int = 3, random_seed: int = 0, **config) -> AdaptRec:
        """A program that retrieves its Stage-1 neighbours live from `index`, then runs Stages 2 and 3.

        Args:
            index: a `UserIndex` from `UserIndex.open(path, data=FOLDER)` (it knows its embedder and pool).
            template: a `Template` or a domain name/TOML path ("movies"); default: the folder's domain.
            program: an AdaptRec (e.g. `load_program(path)`, a compiled program) whose configuration and
                DSPy state (instructions, demos) the live program takes; keyword arguments override its
                configuration.
            overfetch, random_seed: as `adaptrec index neighbors --overfetch/--random-seed`.
            **config: AdaptRec's arguments (selection, n_retrieve, m_select, mode, seed, prompt, labels...).

        Returns:
            A `LiveAdaptRec`: call it with `history_titles` (or `history_item_ids`) and
            `candidate_titles` (or `candidate_ids`); titles map to ids through the folder's items.jsonl.
            A history from outside the dataset needs nothing else (its user is `NEW_USER`: nothing of
            theirs is in the pool); a dataset row passes its `user_id`, `timestamp` and `example_id` and gets
            the neighbours `adaptrec index neighbors` persists for it. `save_program` on it writes the plain
            program (config and DSPy state), never the index or its client; deep copies share the index.

        Example:
            >>> index = UserIndex.open("artifacts/chroma", data="artifacts/ml-100k")  # doctest: +SKIP
            >>> program = AdaptRec.from_index(index, template="movies", selection="static", m_select=5)  # doctest: +SKIP
            >>> with dspy.context(lm=make_lm("hf:artifacts/models/tiny")):  # doctest: +SKIP
            ...     program(history_titles=["Star Wars (1977)"], candidate_titles=["Fargo (1996)", "Heat (1995)"])
        """
        return from_index(index, template, program=program, overfetch=overfetch, random_seed=random_seed, **config)

    def init_config(self) -> dict:
        """Every constructor argument, as given (`config()` leaves defaults out and adds identity markers)."""
        return {"template": self.template, "selection": self.selection, "n_retrieve": self.n_retrieve,
                "m_select": self.m_select, "mode": self.mode, "seed": self.seed, "stage2": self.stage2,
                "orders": self.orders, "prompt": self.prompt, "demo_items": self.demo_items, "labels": self.labels}

    def row_inputs(self, row: dict) -> dict:
        """This program's inputs for a prepared row (what the evaluation harness passes): `example_inputs`."""
        return example_inputs(row)

    def config(self) -> dict:
        config = {"template": self.template.model_dump(), "selection": self.selection, "n_retrieve": self.n_retrieve,
                  "m_select": self.m_select, "mode": self.mode, "seed": self.seed}
        if self.selection == "random":  # users from the whole pool (before 0.2: M of the top N), a new identity
            config["random_from"] = "pool"
        if self.mode == "score-permuted":
            config["orders"] = self.orders
        if self.prompt != "full":
            config["prompt"] = self.prompt
        if self.demo_items is not None:
            config["demo_items"] = self.demo_items
        if self.labels != "numbers":  # numbered programs keep the identity they had before labels existed
            config["labels"] = self.labels
        if self.selection == "adaptive":  # only adaptive runs Stage 2 (other programs' hashes stay as they were)
            config["stage2"] = self.stage2
        return config

    def demonstration_pool(self, neighbors: Sequence, random_users: Sequence = (), required: bool = True) -> list:
        """The users demonstrations are chosen from: the first N retrieved neighbours, or, for the random
        control, the row's random pool users (already in a seeded random order). An empty pool is an
        error when `required` (a program with demonstrations would silently run zero-shot)."""
        pool = list(random_users if self.selection == "random" else neighbors)[: self.n_retrieve]
        if self.demo_items is not None:  # each similar user's most recent items only
            pool = [(list(history)[-self.demo_items :], nxt) for history, nxt in pool]
        if required and self.selection != "none" and not pool:
            what = ("random pool users (`random_*` columns, written by `adaptrec index neighbors` since 0.2: "
                    "rebuild the neighbour folder)" if self.selection == "random" else "Stage-1 neighbours")
            raise ConfigError(f"this program needs {what}: run `adaptrec index neighbors` on the data "
                              "(in Python: adaptrec_prompts.build_neighbors), serve it live with "
                              "AdaptRec.from_index(index, ...), or use selection='none'")
        return pool

    def preset_indices(self, pool_size: int, example_id: str) -> list[int]:
        """The selection that needs no LM, as indices into `demonstration_pool`: [] (none), the first M
        (static, random and, as its start, adaptive), or M drawn by a generator seeded with (seed, example
        id) (random-retrieved)."""
        m = min(self.m_select, pool_size, self.n_retrieve)
        if self.selection == "none":
            return []
        if self.selection == "random-retrieved":
            rng = example_rng(self.seed, "random-selection", example_id)
            return sorted(rng.choice(min(pool_size, self.n_retrieve), size=m, replace=False).tolist())
        return list(range(m))

    def forward(self, history_titles: Sequence[str], candidate_ids: Sequence[int], candidate_titles: Sequence[str],
                neighbors: Sequence[tuple[Sequence[str], str]] = (), example_id: str = "",
                random_users: Sequence[tuple[Sequence[str], str]] = ()) -> dspy.Prediction:
        check_titles(history_titles, "history_titles")
        check_titles(candidate_titles, "candidate_titles")
        pool = self.demonstration_pool(neighbors, random_users)
        selection = {"indices": [], "fallback": False, "padded": False, "reason": ""}
        if self.selection in ("static", "random", "random-retrieved"):
            selection["indices"] = self.preset_indices(len(pool), example_id)
        elif self.selection == "adaptive":
            pred = self.selector(history_titles=history_titles, pool_histories=[h for h, _ in pool])
            selection = {k: pred[k] for k in ("indices", "fallback", "padded", "reason", "method")}
            if pred.fallback:
                logger.info("%s: Stage-2 answer did not parse (%s); using embedding order", example_id, pred.reason)
        similar = [pool[i] for i in selection["indices"]]
        rec = self.recommender(history_titles=history_titles, candidate_ids=candidate_ids,
                               candidate_titles=candidate_titles, similar_users=similar)
        ranking = list(rec.ranking)
        top_title = candidate_titles[list(candidate_ids).index(ranking[0])] if ranking else None
        # who was shown to the LM (histories cut to `demo_items` as shown); ids are known to a live program only
        selected_users = [{"user_id": None, "example_id": None, "history_titles": list(history), "next_title": nxt}
                          for history, nxt in similar]
        return dspy.Prediction(**{k: rec[k] for k in ("answer", "raw", "scores", "valid", "ranking", "reason")},
                               selection=selection, selected_users=selected_users, top_title=top_title)

    def load(self, path, allow_pickle: bool = False, allow_unsafe_lm_state: bool = False):
        """DSPy's `program.load(path)`: a file from `program.save` as DSPy reads it, or a `save_program` file
        when it was saved from a program of this configuration (its DSPy state is loaded into this one).

        Raises:
            ConfigError: a `save_program` file of another configuration (use `load_program(path)`, which builds
                the program the file describes).
        """
        payload = _saved_program(path)
        if payload is None:
            return super().load(path, allow_pickle=allow_pickle, allow_unsafe_lm_state=allow_unsafe_lm_state)
        if payload["config"] != self.config():
            differ = sorted(k for k in {*payload["config"], *self.config()}
                            if payload["config"].get(k) != self.config().get(k))
            raise ConfigError(f"{path} was written by save_program for another configuration (differs in "
                              f"{', '.join(differ)}); build the program it describes with load_program({str(path)!r})")
        self.load_state(payload["state"], allow_unsafe_lm_state=allow_unsafe_lm_state)
        return self


def example_inputs(row: dict) -> dict:
    """Map a prepared dataset row (with the Stage-1 neighbour columns when present) to AdaptRec's inputs."""
    neighbors = list(zip(row.get("neighbor_history_titles") or [], row.get("neighbor_next_titles") or [],
                         strict=True))
    random_users = list(zip(row.get("random_history_titles") or [], row.get("random_next_titles") or [],
                            strict=True))
    return {"history_titles": row["history_titles"], "candidate_ids": row["candidate_item_ids"],
            "candidate_titles": row["candidate_titles"], "neighbors": neighbors, "example_id": row["example_id"],
            "random_users": random_users}


def _saved_program(path) -> dict | None:
    """A `save_program` file's payload, or None for any other file (e.g. DSPy's own `program.save`)."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(payload, dict) and payload.get("class") == "AdaptRec" and "config" in payload:
        return payload
    return None


class LiveAdaptRec(AdaptRec):
    """AdaptRec whose Stage-1 neighbours are retrieved per call (`UserRetriever`), not read from a row.

    Build it with `AdaptRec.from_index`. Call it with a history (titles and/or item ids) and candidates
    (titles and/or ids); a dataset row also passes its `user_id`, `timestamp` and `example_id`
    (`row_inputs` does, for the evaluation harness), a new history passes none of them.

    The Prediction is AdaptRec's (`ranking` holds candidate ids, `top_title` the first one's title,
    `selected_users` the users shown to the LM) plus `ranked_titles`, and the retrieval:
    `neighbor_example_ids`, `neighbor_user_ids`, `neighbor_scores` (empty for selection "none"/"random").
    Here `selected_users` also name each user (`user_id`) and the training window shown (`example_id`).
    """

    def __init__(self, retriever: UserRetriever, template: Template, **config):
        super().__init__(template, **config)
        if retriever.n < self.n_retrieve:
            raise ConfigError(f"the retriever returns {retriever.n} users, fewer than n_retrieve={self.n_retrieve}")
        self.retriever = retriever

    def row_inputs(self, row: dict) -> dict:
        """A prepared row's inputs for live retrieval: its own user, time and example id (never its
        persisted neighbour columns). A row without a user id is refused when called."""
        return {"history_titles": row["history_titles"], "history_item_ids": row["history_item_ids"],
                "candidate_titles": row["candidate_titles"], "candidate_ids": row["candidate_item_ids"],
                "user_id": row.get("user_id"), "timestamp": row.get("timestamp"), "example_id": row["example_id"]}

    def forward(self, history_titles: Sequence[str] | None = None, candidate_titles: Sequence[str] | None = None,
                history_item_ids: Sequence[int] | None = None, candidate_ids: Sequence[int] | None = None,
                user_id: str | NewUser = NEW_USER, timestamp: int | None = None, example_id: str = "") -> dspy.Prediction:
        items = self.retriever.items
        history_item_ids, history_titles = items.resolve(history_item_ids, history_titles, "history")
        candidate_ids, candidate_titles = items.resolve(candidate_ids, candidate_titles, "candidate")
        check_user_id(user_id, example_id)
        neighbors, random_users, retrieved, pool_ids = [], [], None, []
        if self.selection == "random":
            pool_ids = self.retriever.random_example_ids(user_id, timestamp, example_id, self.n_retrieve)
            random_users = self.retriever.random_users(user_id, timestamp, example_id, self.n_retrieve)
        elif self.selection != "none":
            retrieved = self.retriever(history_item_ids=history_item_ids, user_id=user_id, timestamp=timestamp,
                                       example_id=example_id, n=self.n_retrieve)
            neighbors, pool_ids = retrieved.users, list(retrieved.example_ids)
        pred = super().forward(history_titles, candidate_ids, candidate_titles, neighbors=neighbors,
                               example_id=example_id, random_users=random_users)
        for user, index in zip(pred.selected_users, pred.selection["indices"], strict=True):
            user["example_id"] = pool_ids[index]
            user["user_id"] = self.retriever.pool_user(pool_ids[index])
        found = {"example_ids": [], "user_ids": [], "scores": []} if retrieved is None else retrieved
        return dspy.Prediction(**dict(pred.items()), ranked_titles=[items.title_of[i] for i in pred.ranking],
                               **{f"neighbor_{k}": list(found[k]) for k in ("example_ids", "user_ids", "scores")})


def from_index(index: UserIndex, template: Template | str | None = None, *, program: AdaptRec | None = None,
               overfetch: int = 3, random_seed: int = 0, **config) -> LiveAdaptRec:
    """`AdaptRec.from_index` (see there)."""
    if program is not None:
        if config.get("labels", program.labels) != program.labels:  # its DSPy state names its own labels
            raise ConfigError(f"the program uses labels={program.labels!r} (its instructions and demos say so); "
                              f"labels={config['labels']!r} would mix the two")
        config = {**{k: v for k, v in program.init_config().items() if k != "template"}, **config}
        template = program.template if template is None else template
    if template is None:
        if index.data is None:
            raise ConfigError("give template=... or open the index with UserIndex.open(path, data=FOLDER)")
        from adaptrec_prompts.data.prepare import load_manifest

        template = manifest_template(load_manifest(index.data))
    elif isinstance(template, str):
        template = load_template_obj(template)
    from adaptrec_prompts.retrieval.live import UserRetriever

    retriever = UserRetriever(index, n=config.get("n_retrieve", 10), overfetch=overfetch, random_seed=random_seed)
    live = LiveAdaptRec(retriever, template, **config)
    if program is not None:
        live.load_state(program.dump_state())
    return live
