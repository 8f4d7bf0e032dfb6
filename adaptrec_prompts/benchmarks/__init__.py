"""Benchmarks shipped as commands (`adaptrec bench ...`), drivers on top of the library like `experiments`.
They print measured numbers and the command line."""
