"""Pure text rendering of histories, similar users, pool users and numbered candidates.

Wording comes from a domain `Template` (templates/<domain>.toml); this module only fills it. The
structure follows the paper's prompts: similar users as "consumed <history> and then chose <item>",
then the target history, then the candidate list.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

from adaptrec_prompts.errors import ConfigError

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"
DATASET_DOMAINS = {"ml-100k": "movies", "lastfm": "music", "goodreads": "books"}
# How Stage-3 candidates are labelled: "numbers" (1..K) or "letters" (A..Z). A letter is one token in every
# common tokenizer; "10".."20" are two tokens wherever digits are split (Llama 2, Mistral, Gemma), which an API
# score mode that reads one token's logprobs cannot tell apart from "1" and "2" (see scoring.py). "titles": no
# label at all, the candidates listed by title and the answer is the title (LLaRA's answer format), so the choice
# lives in tokens a model can copy from the similar users' next items (docs/design.md, Fine-tuning objectives).
LABELS = ("numbers", "letters", "titles")
# The placeholders each pattern of a Template is filled with (Template._fill and its callers).
PLACEHOLDERS = {
    "history": ("count", "titles"),
    "similar_user": ("number", "count", "titles", "next_title"),
    "pool_user": ("number", "count", "titles"),
    "candidate": ("number", "title"),
}
COMMON_PLACEHOLDERS = ("item", "items", "consumed")


def candidate_label(number: int, labels: str = "numbers") -> str:
    """The label of the `number`-th candidate (1-based): "7" or "G" ("" with `labels="titles"`: no label).

    Raises:
        ConfigError: unknown `labels`, or more than 26 candidates with letters.
    """
    if labels == "numbers":
        return str(number)
    if labels == "titles":
        return ""
    if labels != "letters":
        raise ConfigError(f"labels must be one of {LABELS}, got {labels!r}")
    if not 1 <= number <= 26:
        raise ConfigError(f"labels='letters' can label 26 candidates, not {number}: use labels='numbers'")
    return chr(ord("A") + number - 1)


class Template(BaseModel):
    """One domain's wording. Unknown keys are errors (a typo must not silently change a prompt)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domain: str
    item: str
    items: str
    consumed: str
    history: str
    similar_user: str
    pool_user: str
    candidate: str
    title_separator: str = "; "

    @model_validator(mode="after")
    def _check_placeholders(self) -> Template:
        """A misspelt placeholder ({tittles}) or a stray brace fails here, when the template is loaded, not at
        the first example after a model has loaded."""
        import difflib
        import re
        import string

        for field, own in PLACEHOLDERS.items():
            pattern = getattr(self, field)
            allowed = (*own, *COMMON_PLACEHOLDERS)
            listed = " ".join("{" + a + "}" for a in allowed)
            try:
                names = [name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None]
            except ValueError as exc:  # "Single '}' encountered", an unclosed "{"
                raise ValueError(f"{field} = {pattern!r}: {exc}; write a literal brace as {{{{ or }}}}, and use only "
                                 f"{listed}") from None
            for name in names:
                base = re.split(r"[.\[]", name, maxsplit=1)[0]
                if base not in allowed:
                    close = difflib.get_close_matches(base, allowed, n=1)
                    hint = f"did you mean {{{close[0]}}}? " if close else ""
                    raise ValueError(f"{field} = {pattern!r}: {{{name}}} is not a placeholder of {field}; {hint}"
                                     f"{field} may use {listed}")
        return self

    def _fill(self, pattern: str, **values: object) -> str:
        return pattern.format(item=self.item, items=self.items, consumed=self.consumed, **values)

    def titles(self, titles: Sequence[str]) -> str:
        return self.title_separator.join(titles)

    def render_history(self, titles: Sequence[str]) -> str:
        return self._fill(self.history, count=len(titles), titles=self.titles(titles))

    def render_similar_users(self, users: Sequence[tuple[Sequence[str], str]]) -> str:
        """Numbered similar users, each (history titles, next title), one per line."""
        return "\n".join(
            self._fill(self.similar_user, number=i, count=len(hist), titles=self.titles(hist), next_title=nxt)
            for i, (hist, nxt) in enumerate(users, start=1)
        )

    def render_pool(self, histories: Sequence[Sequence[str]]) -> str:
        """Numbered Stage-2 pool users (histories only: their next choices would leak the answer's shape)."""
        return "\n".join(
            self._fill(self.pool_user, number=i, count=len(hist), titles=self.titles(hist))
            for i, hist in enumerate(histories, start=1)
        )

    def render_candidate(self, number: int, title: str, labels: str = "numbers") -> str:
        """The `number`-th candidate (1-based) as listed and as answered: "3. Alien (1979)", "C. Alien (1979)" or,
        with `labels="titles"`, "Alien (1979)"."""
        if labels == "titles":
            return title
        return self._fill(self.candidate, number=candidate_label(number, labels), title=title)

    def render_candidates(self, titles: Sequence[str], labels: str = "numbers") -> str:
        return "\n".join(self.render_candidate(i, t, labels) for i, t in enumerate(titles, start=1))


def load_template(name_or_path: str | Path) -> Template:
    """Load a template by domain name (`movies`, `music`, `books`) or by path to a TOML file.

    Raises:
        ConfigError: no such template, or a key is unknown or missing.

    Example:
        >>> load_template("movies").render_history(["Alien (1979)", "Aliens (1986)"])
        'The user watched these 2 movies, oldest first: Alien (1979); Aliens (1986).'
    """
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = TEMPLATES_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in TEMPLATES_DIR.glob("*.toml"))
        raise ConfigError(f"template {str(name_or_path)!r} not found; use one of {known} or a path to a .toml file")
    try:
        return Template(**tomllib.loads(path.read_text(encoding="utf-8")))
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: invalid template: {template_problem(exc)}") from None


def template_problem(exc: Exception) -> str:
    """A template error in one line per problem (pydantic's field and message, without its boilerplate)."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return str(exc)
    parts = []
    for error in exc.errors():
        where = ".".join(str(x) for x in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def manifest_template(manifest: dict) -> Template:
    """The template of a prepared folder's domain (older manifests without "domain" use the dataset's)."""
    domain = manifest.get("domain") or DATASET_DOMAINS.get(manifest["dataset"])
    if domain is None:
        raise ConfigError(f"no template domain recorded for dataset {manifest['dataset']!r}; pass --template")
    return load_template(domain)


def as_template(template, where: str) -> Template:
    """A `Template` from a Template, a domain name or a .toml path (`load_template`); anything else is
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


def load_template_obj(value: dict | str) -> Template:
    """A `Template` from its fields (a saved program's `config["template"]`) or a name/.toml path."""
    return Template(**value) if isinstance(value, dict) else load_template(value)
