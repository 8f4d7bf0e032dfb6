"""Stages 2 and 3 as DSPy programs: signatures, chat adapters, the modules, parsing, scoring and compiling."""
