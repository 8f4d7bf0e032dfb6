"""Shared small utilities, below every layer (any module may import them; they import only `errors`).

- `options`: numeric settings checked where they are read (`check_number`), one message everywhere.
- `progress`: progress bars, one style and one rule for when they show.
- `timing`: per-example LM clocks (time inside LM calls, tokens).
- `devices`: `--device` (cpu, cuda, cuda:N, mps, auto), one spelling and one check.
- `testing`: a scripted OpenAI-compatible server on 127.0.0.1, for offline tests of the API path.

They sit in one folder, not at the top level, so that the package's top level reads as the stages; `errors`
stays at the top (`adaptrec_prompts/errors.py`), since every layer raises its classes and the package exports
them.
"""
