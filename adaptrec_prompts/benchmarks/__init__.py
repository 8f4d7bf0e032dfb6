"""Benchmarks shipped as commands (`adaptrec bench ...`). They print measured numbers and the command line."""
