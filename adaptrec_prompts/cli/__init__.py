"""The `adaptrec` command line, the top of the package: it parses arguments and calls the library.

- `app`: the argument parser, the argument types and `main` (the `adaptrec` entry point).
- `commands`: one function per subcommand: arguments in, library calls, printed results.
- `config_file`: `--config FILE` (a YAML file of a command's options).

Nothing below this package sees an argparse namespace (tests/test_layering.py). Until 0.1
`adaptrec_prompts.cli` was the parser module: its names still resolve here (`main` and `make_parser`
directly, the others with a DeprecationWarning).
"""

from adaptrec_prompts._lazy import exports

_LAZY = {"main": "adaptrec_prompts.cli.app", "make_parser": "adaptrec_prompts.cli.app"}
__all__ = list(_LAZY)
__getattr__, __dir__ = exports(__name__, _LAZY)
