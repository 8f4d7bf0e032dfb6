"""`python -m adaptrec_prompts.cli ...` runs the `adaptrec` command."""

import sys

from adaptrec_prompts.cli.app import main

sys.exit(main())
