"""`--config FILE`: a command's options from a YAML file, the way TRL's `TrlParser` reads `--config`.

    # run.yaml                              $ adaptrec eval --config run.yaml --limit 5
    data: artifacts/ml-100k-nb
    program: static
    lm: hf:artifacts/models/tiny
    max_new_tokens: 32                      (or max-new-tokens)
    out: runs/static

The keys are the command's option names, with dashes or underscores; flags take true/false; null leaves the
default. Options given on the command line win over the file. The file's values go through the same parsing
as typed ones (types, choices, `--limit >= 1`), and a wrong key or value is an error that names the file,
the key and what is valid: a typo in a config file must never be silently ignored, since the run would then
quietly use a default.

How: a parser with a `--config` option reads the file before parsing and puts its values in front of the
arguments (`--key=value` each); a later occurrence of an option replaces an earlier one, so the command
line overrides the file, and required options given only in the file count as given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SKIPPED = ("help", "config")  # options a config file cannot set


class ConfigFileParser(argparse.ArgumentParser):
    """An ArgumentParser whose commands with a `--config` option also read their options from a YAML file.
    Subparsers are of the same class, so only the commands that add `--config` (add_config_option) read one."""

    def parse_known_args(self, args=None, namespace=None):
        if args is None or not self._config_action():
            return super().parse_known_args(args, namespace)
        path = _config_path(list(args))
        if path is None:
            return super().parse_known_args(args, namespace)
        parsed, extras = super().parse_known_args(self.file_arguments(path) + list(args), namespace)
        if parsed.config != path:  # e.g. an abbreviated --conf that the scan above did not see
            self.error(f"--config {parsed.config}: write the option in full (--config FILE) so the file is read")
        return parsed, extras

    def _config_action(self) -> argparse.Action | None:
        return next((a for a in self._actions if a.dest == "config" and a.option_strings), None)

    def options(self) -> dict[str, argparse.Action]:
        """The options a config file may set: key (dashes) -> its action."""
        keys = {}
        for action in self._actions:
            longs = [o for o in action.option_strings if o.startswith("--")]
            if longs and action.dest not in SKIPPED:
                keys[longs[0][2:]] = action
        return keys

    def file_arguments(self, path: str) -> list[str]:
        """The file's settings as arguments (`--key=value`, flags alone), each value checked as typed."""
        options = self.options()
        valid = ", ".join(sorted(options))
        values = read_yaml(path, self.error)
        arguments = []
        for key, value in values.items():
            name = str(key).replace("_", "-")
            action = options.get(name)
            if action is None:
                self.error(f"{path}: unknown key {key!r}; valid keys: {valid}")
            option = f"--{name}"
            if value is None:  # null: keep the default
                continue
            if action.nargs == 0:  # a flag (store_true)
                if not isinstance(value, bool):
                    self.error(f"{path}: {key}: a flag takes true or false, got {value!r}")
                if value:
                    arguments.append(option)
                continue
            if isinstance(value, bool):  # YAML reads yes/no/on/off as booleans too
                self.error(f"{path}: {key}: got the boolean {value!r}; quote the value if you mean text")
            if isinstance(value, (list, dict)):
                self.error(f"{path}: {key}: expected one value as on the command line, got {value!r} (write a "
                           "list as one comma-separated string, e.g. '1,3,5')")
            text = str(value)
            try:
                converted = action.type(text) if callable(action.type) else text
            except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
                self.error(f"{path}: {key}: {str(exc) or f'invalid value {value!r}'}")
            if action.choices is not None and converted not in action.choices:
                self.error(f"{path}: {key}: {value!r} is not one of {', '.join(map(str, action.choices))}")
            arguments.append(f"{option}={text}")
        return arguments


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML file of these options (keys are the option names, "
                        "dashes or underscores); options given here override it")


def read_yaml(path: str, fail) -> dict:
    """The mapping in a YAML file; `fail(message)` for a missing file, bad YAML or another top-level type."""
    import yaml

    file = Path(path)
    if not file.is_file():
        fail(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        fail(f"{path}: not valid YAML: {str(exc).strip()}")
    if values is None:
        return {}
    if not isinstance(values, dict):
        fail(f"{path}: expected a mapping of option names to values (e.g. `limit: 20`), got a "
             f"{type(values).__name__}")
    return values


def _config_path(args: list[str]) -> str | None:
    """The value of the last `--config FILE` / `--config=FILE` in `args` (before a `--`)."""
    path = None
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--config" and i + 1 < len(args):
            path = args[i + 1]
        elif arg.startswith("--config="):
            path = arg.removeprefix("--config=")
    return path
