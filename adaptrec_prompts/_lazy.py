"""A package's public names, imported from the modules that define them on first use (PEP 562).

Every package of adaptrec_prompts lists its public names in its `__init__.py` with `exports`, so importing a
package imports none of its modules: `import adaptrec_prompts` loads no DSPy, and `from
adaptrec_prompts.retrieval import UserIndex` loads the index module, not torch or chromadb.

    __getattr__, __dir__ = exports(__name__, {"UserIndex": "adaptrec_prompts.retrieval.index", ...})
"""

from __future__ import annotations

import importlib
import sys


def exports(package: str, names: dict[str, str]):
    """`(__getattr__, __dir__)` for `package`, whose public `names` (name -> defining module) resolve on first
    access and are then cached in the package. Other names fail as usual, except the names of an old module
    of the same path (`_compat.former_attribute`)."""

    def __getattr__(name: str):
        module = names.get(name)
        if module is None:
            from adaptrec_prompts._compat import former_attribute

            value = former_attribute(package, name)  # warns once: the value is cached below
        else:
            value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *names})

    return __getattr__, __dir__
