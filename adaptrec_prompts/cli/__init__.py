"""The `adaptrec` command line: argument parsing (`app`), the subcommands (`commands`) and `--config` files."""
