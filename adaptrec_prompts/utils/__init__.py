"""Shared small utilities every layer may use: numeric option checks, progress bars, LM clocks, devices and a
scripted OpenAI-compatible server for tests."""
