"""DSPy modules: UserSelector (Stage 2), NextItemRecommender (Stage 3), AdaptRec (1 -> 2 -> 3).

Modules hold predictors and plain config only (a `Template`, strings, ints): no clients, models or
files, so DSPy optimizers can deep-copy them. Stage-1 neighbours arrive as inputs, in embedding order.
Programs are saved as JSON (`save_program` / `load_program`): the config plus DSPy's state
(instructions, demos); never a pickle, never an LM endpoint or key. The one exception to "neighbours
arrive as inputs" is `AdaptRec.from_index` (live.py): a program that retrieves them per call holds the
retriever as a non-parameter attribute that deep copies share, and saves exactly like the plain program.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import dspy
from dspy.utils.exceptions import AdapterParseError

from adaptrec_prompts.data.protocol import example_rng
from adaptrec_prompts.data.render import LABELS, Template, candidate_label, load_template
from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.programs.chat_adapters import PROMPTS, adapter_for, eval_adapter  # noqa: F401 - re-exported
from adaptrec_prompts.programs.parsing import parse_choice, parse_selection, ranking_from_scores
from adaptrec_prompts.programs.scoring import score_completions
from adaptrec_prompts.programs.signatures import RecommendNextItem, RecommendNextItemZeroShot, SelectSimilarUsers, for_labels
from adaptrec_prompts.utils.options import check_number

logger = logging.getLogger(__name__)

# "random": M users drawn from the whole Stage-1 pool (the paper's control; persisted by `index neighbors`);
# "random-retrieved": M of the N retrieved users drawn at random (a shuffle of the retrieved, not a control).
SELECTIONS = ("none", "random", "random-retrieved", "static", "adaptive")
MODES = ("generate", "score", "score-calibrated", "score-permuted")
SCORE_ORDERS = 3  # list orders averaged by mode "score-permuted"
# The content-free context of mode "score-calibrated": the zero-shot prompt with this instead of a history.
NULL_HISTORY = "The user's history is not shown."
PROGRAM_FORMAT = 1


def answer_block(assistant_content: str) -> str:
    """What score mode scores: the answer field (header, value and the newline that ends it), without the
    end-marker block that is the same boilerplate after every candidate."""
    return assistant_content.split("\n\n[[ ## completed ## ]]")[0] + "\n"


def _check_prompt(prompt: str) -> str:
    if prompt not in PROMPTS:
        raise ConfigError(f"prompt must be one of {PROMPTS}, got {prompt!r}")
    return prompt


def _as_template(template, where: str) -> Template:
    """A `Template` from a Template, a domain name or a .toml path (`render.load_template`); anything else is
    refused here, when the module is built, not at its first call."""
    if isinstance(template, Template):
        return template
    if isinstance(template, (str, Path)):
        return load_template(str(template))
    raise TypeError(f"{where}: template={template!r} is a {type(template).__name__}; pass a Template, a domain "
                    "name (\"movies\", \"music\", \"books\") or a .toml path")


def check_titles(value, name: str) -> None:
    """Refuse a bare string where a list of titles is expected (it would be read as one title per letter)."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a list of titles, got the string {value[:60]!r}; pass [{value[:60]!r}] "
                        "for a single title")


def lm_of(predictor: dspy.Predict):
    """The LM a predictor runs on, as DSPy resolves it: its own (`set_lm`) before the global one."""
    return predictor.lm or dspy.settings.lm


STAGE2_MODES = ("auto", "generate", "score")


def stage2_completions(pool_size: int, m: int) -> list[str]:
    """What Stage 2 in score mode scores: the selection field opening with user i, for i = 1..pool_size.

    "[i," when M > 1 (user i named first, more to follow: "[1," cannot be read as the start of "[10"),
    "[i]" when M = 1.
    """
    close = "," if m > 1 else "]"
    return [f"[[ ## selected_users ## ]]\n[{i}{close}" for i in range(1, pool_size + 1)]


def top_m_by_score(scores: Sequence[float], m: int) -> list[int]:
    """The M highest-scoring pool positions (ties: embedding order), in embedding order."""
    return sorted(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:m])


class UserSelector(dspy.Module):
    """Stage 2: the LM picks the M pool users most similar to the target user.

    mode="generate": the LM writes the list; if the answer does not parse, the selection falls back to
    embedding order and says so (`fallback=True`); if it names fewer than M users, embedding order fills
    the rest (`padded=True`).
    mode="score" (local engines that score): the same prompt, one prefill, and the M users whose number is
    most likely to open the list (`stage2_completions`) are kept: always a valid selection, the one the
    self-adaptive fine-tuning callback uses too. "auto": score when the LM's engine can, else generate.
    """

    def __init__(self, template: Template | str, m_select: int = 5, mode: str = "auto", prompt: str = "full"):
        super().__init__()
        if mode not in STAGE2_MODES:
            raise ConfigError(f"Stage-2 mode must be one of {STAGE2_MODES}, got {mode!r}")
        self.template = _as_template(template, "UserSelector")
        self.m_select = m_select
        self.mode = mode
        self.prompt = _check_prompt(prompt)
        self.select = dspy.Predict(SelectSimilarUsers)

    def adapter(self) -> dspy.ChatAdapter:
        """The adapter this module renders through (`adapters.adapter_for`)."""
        return adapter_for(self.prompt)

    def inputs(self, history_titles: Sequence[str], pool_histories: Sequence[Sequence[str]], m: int) -> dict:
        return {"user_history": self.template.render_history(history_titles),
                "candidate_users": self.template.render_pool(pool_histories), "select_count": m}

    def forward(self, history_titles: Sequence[str], pool_histories: Sequence[Sequence[str]]) -> dspy.Prediction:
        check_titles(history_titles, "history_titles")
        m = min(self.m_select, len(pool_histories))
        inputs = self.inputs(history_titles, pool_histories, m)
        lm = lm_of(self.select)  # a predictor's own LM wins, as in generate mode (dspy.Predict)
        engine = getattr(lm, "engine", None)
        can_score = callable(getattr(engine, "score", None))
        if self.mode == "score" and not can_score:
            raise ConfigError("Stage-2 score mode needs a local model whose engine scores (hf:PATH or "
                              "gemma-3-270m); use stage2='generate' for API models")
        if self.mode == "score" or (self.mode == "auto" and can_score):
            adapter = self.adapter()
            messages = adapter.format(signature=self.select.signature, demos=self.select.demos, inputs=inputs)
            scores = score_completions(lm, messages, stage2_completions(len(pool_histories), m))
            return dspy.Prediction(indices=top_m_by_score(scores, m), fallback=False, padded=False, reason="",
                                   method="score")
        raw, values = None, None
        try:
            with dspy.context(adapter=self.adapter()):
                pred = self.select(**inputs)
            values = pred.selected_users
        except AdapterParseError as exc:
            raw = exc.lm_response
        picked, reason = parse_selection(values, len(pool_histories), m) if values is not None else (
            None, f"adapter could not parse the answer: {str(raw)[:200]!r}")
        if picked is None:
            return dspy.Prediction(indices=list(range(m)), fallback=True, padded=False, reason=reason,
                                   method="generate")
        padded = len(picked) < m
        picked += [i for i in range(len(pool_histories)) if i not in picked][: m - len(picked)]
        return dspy.Prediction(indices=picked, fallback=False, padded=padded, reason="", method="generate")


class NextItemRecommender(dspy.Module):
    """Stage 3: pick the next item among K labelled candidates, with or without similar users.

    labels="numbers" lists them as "1. <title>" .. "20. <title>"; labels="letters" as "A. <title>" ..
    "T. <title>" (one token each in every common tokenizer: what API score mode needs, see scoring.py);
    labels="titles" lists the titles alone and the answer is the title (LLaRA's format: the choice is made
    in title tokens, which the similar users' next items show; score mode then ranks the K titles by their
    likelihood, local engines only).

    mode="generate": the LM writes an answer, parsed exactly (parsing.parse_choice).
    mode="score": every candidate's answer (the answer field "<number>. <title>" and its newline) is
    scored by log-likelihood after the same prompt (one prefill, cache reused; the backend must support
    scoring), giving a full ranking.
    mode="score-calibrated": the score minus the same answer's score after a content-free prompt (the
    zero-shot prompt with `NULL_HISTORY` for the history and the same candidates): what the context adds
    to a candidate beyond its prior as a string and its number (Holtzman et al., 2021, "Surface Form
    Competition"; Zhao et al., 2021, "Calibrate Before Use"). One more prefill per example.
    mode="score-permuted": the candidate list is shown in `orders` cyclic shifts (by K / orders positions)
    and each candidate's score is averaged over them, so every list position is held by `orders` different
    candidates and no candidate is scored only at position 1 (Hou et al., 2023, "Large Language Models are
    Zero-Shot Rankers", bootstrapped orders). `orders` prefills per example.
    """

    def __init__(self, template: Template | str, mode: str = "generate", zero_shot: bool = False,
                 orders: int = SCORE_ORDERS, prompt: str = "full", labels: str = "numbers"):
        super().__init__()
        template = _as_template(template, "NextItemRecommender")
        if labels not in LABELS:
            raise ConfigError(f"labels must be one of {LABELS}, got {labels!r}")
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
        if orders < 1:
            raise ConfigError(f"orders must be >= 1, got {orders}")
        self.template = template
        self.mode = mode
        self.orders = orders
        self.prompt = _check_prompt(prompt)
        self.zero_shot = zero_shot
        self.labels = labels
        signature = RecommendNextItemZeroShot if zero_shot else RecommendNextItem
        self.recommend = dspy.Predict(for_labels(signature, labels))
        # the content-free prompt of score-calibrated mode, labelled like the real one
        self.null_signature = for_labels(RecommendNextItemZeroShot, labels)

    def adapter(self) -> dspy.ChatAdapter:
        """The adapter this module renders through (`adapters.adapter_for`)."""
        return adapter_for(self.prompt)

    def inputs(self, history_titles: Sequence[str], candidate_titles: Sequence[str],
               similar_users: Sequence[tuple[Sequence[str], str]] = ()) -> dict[str, str]:
        """The signature's input values, rendered with the template."""
        values = {"user_history": self.template.render_history(history_titles),
                  "candidates": self.template.render_candidates(candidate_titles, self.labels)}
        if not self.zero_shot:
            values["similar_users"] = self.template.render_similar_users(similar_users)
        return values

    def answer_text(self, number: int, title: str) -> str:
        """The answer the `number`-th candidate (1-based) would be, as the signature asks for it."""
        return self.template.render_candidate(number, title, self.labels)

    def candidate_labels(self, k: int) -> list[str] | None:
        """The labels of K candidates, in list order ("1".."K" or "A"..; None for titles: no label)."""
        if self.labels == "titles":
            return None
        return [candidate_label(i, self.labels) for i in range(1, k + 1)]

    def completions(self, adapter, candidate_titles: Sequence[str]) -> list[str]:
        """What score mode scores for each candidate, in list order (see `answer_block`)."""
        signature = self.recommend.signature
        return [answer_block(adapter.format_assistant_message_content(signature, {"answer": self.answer_text(i, t)}))
                for i, t in enumerate(candidate_titles, start=1)]

    def permuted_scores(self, adapter, first: list[float], history_titles, candidate_titles, similar_users, lm=None
                        ) -> list[float]:
        """Mean score of each candidate over `orders` cyclic shifts of the list (`first`: the shift by 0)."""
        k = len(candidate_titles)
        totals = list(first)
        for p in range(1, self.orders):
            shift = (p * k) // self.orders
            order = [(i + shift) % k for i in range(k)]  # position j shows candidate order[j]
            titles = [candidate_titles[i] for i in order]
            messages = adapter.format(signature=self.recommend.signature, demos=self.recommend.demos,
                                      inputs=self.inputs(history_titles, titles, similar_users))
            for j, score in enumerate(score_completions(lm or lm_of(self.recommend), messages,
                                                        self.completions(adapter, titles),
                                                        labels=self.candidate_labels(k))):
                totals[order[j]] += score
        return [t / self.orders for t in totals]

    def forward(self, history_titles: Sequence[str], candidate_ids: Sequence[int], candidate_titles: Sequence[str],
                similar_users: Sequence[tuple[Sequence[str], str]] = ()) -> dspy.Prediction:
        check_titles(history_titles, "history_titles")
        check_titles(candidate_titles, "candidate_titles")
        inputs = self.inputs(history_titles, candidate_titles, similar_users)
        if self.mode in ("score", "score-calibrated", "score-permuted"):
            lm = lm_of(self.recommend)  # a predictor's own LM wins, as in generate mode (dspy.Predict)
            adapter = self.adapter()
            signature = self.recommend.signature
            messages = adapter.format(signature=signature, demos=self.recommend.demos, inputs=inputs)
            completions = self.completions(adapter, candidate_titles)
            labels = self.candidate_labels(len(candidate_titles))
            scores = score_completions(lm, messages, completions, labels=labels)
            if self.mode == "score-permuted":
                scores = self.permuted_scores(adapter, scores, history_titles, candidate_titles, similar_users, lm)
            if self.mode == "score-calibrated":
                null = adapter.format(signature=self.null_signature, demos=[], inputs={
                    "user_history": NULL_HISTORY, "candidates": inputs["candidates"]})
                scores = [s - b for s, b in zip(scores, score_completions(lm, null, completions, labels=labels),
                                                strict=True)]
            if all(s == float("-inf") for s in scores):
                return dspy.Prediction(answer=None, raw=None, scores=scores, valid=False, ranking=[],
                                       reason="no candidate label found in the answer's token logprobs")
            result = ranking_from_scores(scores, candidate_ids)
            return dspy.Prediction(answer=None, raw=None, scores=scores, valid=True, ranking=result.ranking, reason="")
        raw = answer = None
        try:
            with dspy.context(adapter=self.adapter()):
                answer = self.recommend(**inputs).answer
            raw = answer
        except AdapterParseError as exc:
            raw = exc.lm_response
        result = parse_choice(answer, candidate_ids, candidate_titles, self.labels)
        if answer is None:
            result = type(result)(False, [], f"adapter could not parse the answer: {str(raw)[:200]!r}")
        return dspy.Prediction(answer=answer, raw=raw, scores=None, valid=result.valid, ranking=result.ranking,
                               reason=result.reason)


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
        prompt: "full" (DSPy's ChatAdapter) or "compact" (`adapters.CompactAdapter`: the instructions as the
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
        template = _as_template(template, type(self).__name__)
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
        self.prompt = _check_prompt(prompt)
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
            A `live.LiveAdaptRec`: call it with `history_titles` (or `history_item_ids`) and
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
        from adaptrec_prompts.retrieval.live import from_index

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


def save_program(program: AdaptRec, path: str | Path) -> Path:
    """Write a program as JSON: its config and DSPy state (instructions, demos). No LM, no keys."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = program.dump_state()
    for predictor in state.values():  # an LM set on a predictor carries endpoints: never saved
        if isinstance(predictor, dict):
            predictor["lm"] = None
    payload = {"format": PROGRAM_FORMAT, "class": "AdaptRec", "config": program.config(), "state": state}
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    return path


# What `save_program` writes, and all `load_program` accepts (docs/failure-behaviour.md): a program file names
# prompts and demonstrations, never a model, a server or an attribute to set. DSPy's `Predict.load_state` would
# rebuild an LM from a predictor's "lm" entry and set any other key as an attribute; both are refused here.
PROGRAM_KEYS = {"format", "class", "config", "state"}
PREDICTOR_KEYS = {"demos", "lm", "signature", "traces", "train"}
SIGNATURE_KEYS = {"instructions", "fields"}
FIELD_KEYS = {"prefix", "description"}


def _refuse(path: Path, where: str, problem: str) -> ConfigError:
    return ConfigError(f"{path}: {where}: {problem}; a program file holds only what save_program writes "
                       "(config, instructions, demos): remove it, or save the program again with save_program()")


def _json_value(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_value(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_json_value(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def check_program_payload(path: Path, payload, program: AdaptRec) -> None:
    """Refuse a program file with anything `save_program` does not write (an `lm` state above all).

    Raises:
        ConfigError: naming the file and the key.
    """
    if not isinstance(payload, dict):
        raise _refuse(path, "top level", f"expected a JSON object, got {type(payload).__name__}")
    for key in sorted(set(payload) - PROGRAM_KEYS):
        raise _refuse(path, f"key {key!r}", "not a key of a saved program")
    if payload.get("format") != PROGRAM_FORMAT or payload.get("class") != "AdaptRec":
        raise _refuse(path, "format/class", f"expected format {PROGRAM_FORMAT} and class 'AdaptRec', got "
                      f"{payload.get('format')!r} and {payload.get('class')!r}")
    state = payload.get("state")
    expected = {name for name, _ in program.named_predictors()}
    if not isinstance(state, dict):
        raise _refuse(path, "state", f"expected an object, got {type(state).__name__}")
    for name in sorted(set(state) ^ expected):
        raise _refuse(path, f"state[{name!r}]", f"this program's predictors are {sorted(expected)}")
    for name, predictor in state.items():
        where = f"state[{name!r}]"
        if not isinstance(predictor, dict):
            raise _refuse(path, where, f"expected an object, got {type(predictor).__name__}")
        for key in sorted(set(predictor) - PREDICTOR_KEYS):
            raise _refuse(path, f"{where}[{key!r}]", "not a key save_program writes")
        if predictor.get("lm") is not None:  # DSPy would build this LM and call it instead of --lm/--api-base
            raise _refuse(path, f"{where}['lm']", "a program file must not name a model or a server (the run's "
                          "--lm/--api-base decide them); save_program writes null here")
        for key in ("demos", "traces", "train"):
            value = predictor.get(key, [])
            if not isinstance(value, list) or not _json_value(value):
                raise _refuse(path, f"{where}[{key!r}]", f"expected a list of JSON values, got {type(value).__name__}")
        if not all(isinstance(d, dict) for d in predictor.get("demos", [])):
            raise _refuse(path, f"{where}['demos']", "every demo must be an object of field name -> value")
        signature = predictor.get("signature")
        if not isinstance(signature, dict):
            raise _refuse(path, f"{where}['signature']", f"expected an object, got {type(signature).__name__}")
        for key in sorted(set(signature) - SIGNATURE_KEYS):
            raise _refuse(path, f"{where}['signature'][{key!r}]", "not a key save_program writes")
        if not isinstance(signature.get("instructions", ""), str):
            raise _refuse(path, f"{where}['signature']['instructions']", "expected a string")
        fields = signature.get("fields", [])
        if not isinstance(fields, list) or not all(isinstance(f, dict) and set(f) <= FIELD_KEYS and
                                                   all(isinstance(v, str) for v in f.values()) for f in fields):
            raise _refuse(path, f"{where}['signature']['fields']",
                          f"expected a list of objects with string {sorted(FIELD_KEYS)}")


def load_program(path: str | Path, **overrides) -> AdaptRec:
    """Build an AdaptRec from a saved JSON file (optionally overriding config keys such as mode).

    Only what `save_program` writes is accepted (`check_program_payload`): a predictor state naming an LM,
    or any other key, is refused, and no LM is ever built from a file.

    Raises:
        ConfigError: the file is not a saved AdaptRec program, or holds a key save_program does not write.
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(payload, dict) and "metadata" in payload and "config" not in payload:
            raise ConfigError(f"{path} was written by DSPy's program.save: it holds DSPy state without the program's "
                              "configuration; build the same AdaptRec and call program.load(path), or save with "
                              "save_program(program, path) to read it back with load_program")
        if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict):
            raise KeyError("config")
        unknown = sorted(set(payload["config"]) - set(_INIT_ARGS) - {"random_from"})
        if unknown:
            raise _refuse(path, f"config[{unknown[0]!r}]", f"not an AdaptRec setting; valid: {', '.join(_INIT_ARGS)}")
        saved = payload["config"].get("labels", "numbers")
        if overrides.get("labels", saved) != saved:  # the saved instructions and demos name the saved labels
            raise ConfigError(f"{path} was saved with labels={saved!r}: its instructions and demos say so; "
                              f"evaluate it with labels={saved!r}, or build and compile a program with "
                              f"labels={overrides['labels']!r}")
        config = {**payload["config"], **overrides}
        config.pop("random_from", None)  # an identity marker of config(), not a constructor argument
        template = config.pop("template")
        if not isinstance(template, dict):  # save_program writes the wording itself, never a path to read
            raise _refuse(path, "config['template']", f"expected the template's fields, got {type(template).__name__}")
        try:
            template = load_template_obj(template)
        except ConfigError:
            raise
        except ValueError as exc:  # pydantic: a misspelt placeholder or key in the saved wording
            from adaptrec_prompts.data.render import template_problem

            raise ConfigError(f"{path}: config.template is not a valid template: {template_problem(exc)}; fix it "
                              "or save the program again") from None
        try:
            program = AdaptRec(template, **config)
        except ConfigError as exc:
            raise ConfigError(f"{path}: config: {exc}") from None
        check_program_payload(path, payload, program)
        _check_state_shapes(path, program, payload["state"])
        # the state is checked: no "lm", no key DSPy would set as an attribute, the shapes DSPy reads
        program.load_state(payload["state"])
    except ConfigError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a saved AdaptRec program ({type(exc).__name__}: {exc}); create one with "
                          "save_program()") from None
    return program


def _saved_program(path) -> dict | None:
    """A `save_program` file's payload, or None for any other file (e.g. DSPy's own `program.save`)."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(payload, dict) and payload.get("class") == "AdaptRec" and "config" in payload:
        return payload
    return None


_INIT_ARGS = ("template", "selection", "n_retrieve", "m_select", "mode", "seed", "stage2", "orders", "prompt",
              "demo_items", "labels")


def _check_state_shapes(path: Path, program: AdaptRec, state) -> None:
    """The saved predictor states have the shapes DSPy reads (an object per predictor, a list of demo objects,
    a signature object) and no key that would replace one of the predictor's methods (DSPy sets every key
    as an attribute), so a bad file fails here, named, not at the first example after the model loaded."""
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: \"state\" must be an object of predictor states, got {type(state).__name__}")
    for name, predictor in program.named_predictors():
        entry = state.get(name)
        where = f"{path}: state[{name!r}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be an object (demos, signature, ...), got "
                              f"{'nothing' if entry is None else type(entry).__name__}; save the program again")
        demos = entry.get("demos", [])
        if not isinstance(demos, list) or not all(isinstance(d, dict) for d in demos):
            raise ConfigError(f"{where}[\"demos\"] must be a list of demo objects, got "
                              f"{type(demos).__name__ if not isinstance(demos, list) else 'a list with a non-object'}"
                              "; use [] for none")
        if not isinstance(entry.get("signature"), dict):
            raise ConfigError(f"{where}[\"signature\"] must be an object (instructions, fields); save the program "
                              "again")
        for key in entry:  # DSPy reads these four itself; it sets every other key as an attribute
            if key not in ("signature", "extended_signature", "lm", "fields") and callable(getattr(predictor, key,
                                                                                                  None)):
                raise ConfigError(f"{where}[{key!r}] would replace the predictor's method {key!r}: a saved program "
                                  "holds data only; remove the key")


def load_template_obj(value: dict | str) -> Template:
    return Template(**value) if isinstance(value, dict) else load_template(value)
