"""Every `python -m drn_lightning.train` (or `drn-train`) command the README shows composes as written (`--cfg job`, which needs no
data), and each `key=value` it types lands in the composed config. Sweeps (`-m a=x,y`) are composed once per
first and last value, since Hydra prints one job's config at a time."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
GROUPS = {p.name for p in (REPO_ROOT / "conf").iterdir() if p.is_dir()}


def readme_train_commands() -> list[str]:
    """The README's training command lines (continuations joined, comments dropped), in order."""
    text = (REPO_ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith(("python -m drn_lightning.train", "drn-train ")):
                commands.append(line)
    return commands


def single_runs(command: str) -> list[list[str]]:
    """The overrides of one job per first and last sweep value (the command itself when it sweeps nothing)."""
    args = shlex.split(command)[1 if command.startswith("drn-train") else 3 :]
    sweep = "-m" in args
    args = [a for a in args if a != "-m"]
    if not sweep:
        return [args]
    first = [a.split("=", 1)[0] + "=" + a.split("=", 1)[1].split(",")[0] if "," in a else a for a in args]
    last = [a.split("=", 1)[0] + "=" + a.split("=", 1)[1].split(",")[-1] if "," in a else a for a in args]
    return [first, last] if first != last else [first]


COMMANDS = readme_train_commands()


def test_the_readme_shows_the_training_commands_this_test_covers() -> None:
    text = " ".join(COMMANDS)
    for needle in ("model=drn_l scale=8 trainer.devices=4", "data=semi data.unpaired.hr_dir=", "experiment=adapt_real"):
        assert needle in text
    assert len(COMMANDS) >= 10


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in COMMANDS if "hydra.searchpath" not in c])  # Extending: own test
def test_readme_training_command_composes_as_written(command: str, tmp_path: Path) -> None:
    if "hydra/launcher=slurm" in command:
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    for overrides in single_runs(command):
        done = subprocess.run(
            [sys.executable, "-m", "drn_lightning.train", *overrides, "--cfg", "job", "--resolve"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert done.returncode == 0, f"{overrides}\n{done.stderr[-2000:]}"
        cfg = OmegaConf.create(done.stdout)
        for override in overrides:
            key, _, value = override.partition("=")
            if key.split("/")[0] in GROUPS or key.startswith(("hydra", "+", "~")) or key in ("experiment",):
                continue
            assert OmegaConf.select(cfg, key) == yaml.safe_load(value), f"{override} did not land in the config"
