"""adaptrec-prompts: AdaptRec (arXiv 2504.08786) on DSPy, Chroma and TRL.

`import adaptrec_prompts` stays light: it never imports torch, chromadb or trl. Heavy parts live in
their own modules and are imported where they are used.
"""

from adaptrec_prompts.errors import (AdaptRecError, ConfigError, DataError, LeakageError, OutputExistsError,
                                     UnsafePickleError)

__version__ = "0.1.0"

__all__ = [
    "AdaptRecError",
    "ConfigError",
    "DataError",
    "LeakageError",
    "OutputExistsError",
    "UnsafePickleError",
    "__version__",
]
