"""Training with Lightning; submodules are imported by name, so `python -m drn_lightning.eval` starts without it."""
