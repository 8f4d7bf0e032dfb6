"""Names of the built-in model presets, in a module of their own.

`backends.api` (which turns an `--lm` spec into an LM) and `backends.gemma` (which builds the preset) both
need the preset's name; kept in either one, each would import the other, and importing `backends.gemma`
first would then fail half-initialised. Both import it from here instead, and so does anything else that
tells a preset apart from a model folder (training, the SFT experiment, the SFT benchmark).
"""

GEMMA_PRESET = "gemma-3-270m"
