"""Hydra config groups, importable so console scripts find them as a config module (Hydra needs this file)."""
