"""Batch sampler mixing paired and unpaired samples at an exact ratio, sharded across DDP ranks."""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import ConcatDataset, Sampler

from drn_lightning.options import fraction, integer

_PAIRED, _UNPAIRED = 0, 1
SampleKey = tuple[int, int]


def split_key(key: int | SampleKey) -> tuple[int, int | None]:
    """``index`` -> (index, None: use the global RNG); ``(index, seed)`` -> (index, seed)."""
    if isinstance(key, tuple):
        if len(key) != 2:
            raise TypeError(f"a sample key is an index or (index, seed), got {key!r}")
        return int(key[0]), int(key[1])
    return int(key), None


@functools.lru_cache(maxsize=8)
def _permutation(seed: int, pool: int, cycle: int, size: int) -> np.ndarray:
    """The ``cycle``-th seeded permutation of a pool, cached because consecutive batches draw from the same one."""
    return np.random.default_rng([seed, pool, cycle]).permutation(size)


class MixedBatchSampler(Sampler[list[Any]]):
    """Rank batches of ``ConcatDataset([paired, unpaired])``: exact unpaired share, a pure function of seed and step."""

    def __init__(
        self,
        n_paired: int,
        n_unpaired: int,
        batch_size: int,
        unpaired_ratio: float,
        num_batches: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        keyed: bool = False,
    ) -> None:
        self.n_paired = integer(n_paired, "n_paired", 1)  # every global batch needs paired samples
        self.n_unpaired = integer(n_unpaired, "n_unpaired", 0)
        self.batch_size = integer(batch_size, "batch_size", 1)
        self.num_batches = integer(num_batches, "num_batches", 1)
        self.num_replicas = integer(num_replicas, "num_replicas", 1)
        self.rank = integer(rank, "rank", 0)
        self.seed = integer(seed, "seed", 0)
        self.keyed = bool(keyed)
        if self.rank >= self.num_replicas:
            raise ValueError(f"rank={rank!r} must be in [0, num_replicas={self.num_replicas})")
        ratio = self.unpaired_ratio = fraction(unpaired_ratio, "unpaired_ratio")
        self.global_batch = self.batch_size * self.num_replicas
        self.unpaired_per_global = int(ratio * self.global_batch + 0.5)  # half rounds up
        self.paired_per_global = self.global_batch - self.unpaired_per_global
        if ratio > 0 and self.n_unpaired == 0:
            raise ValueError(f"unpaired_ratio={ratio} > 0 needs unpaired samples, but n_unpaired is 0")
        if self.paired_per_global == 0:
            raise ValueError(
                f"unpaired_ratio={ratio} rounds to {self.unpaired_per_global} of {self.global_batch} samples per global"
                " batch, leaving no paired sample; lower unpaired_ratio or raise batch_size"
            )
        self.epoch, self.repeat_epoch, self._start = 0, False, 0

    @property
    def sampler(self) -> MixedBatchSampler:
        """Lightning calls ``dataloader.batch_sampler.sampler.set_epoch`` each epoch; route it here."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches ``__iter__`` yields (called by Lightning each epoch), unless repeating one."""
        if not self.repeat_epoch:
            self.epoch = integer(epoch, "epoch", 0)

    def start_at(self, batch: int) -> None:
        """Begin the next iteration at batch ``batch`` of the current epoch (once), as a resumed run must."""
        self._start = integer(batch, "batch", 0)

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank, so DDP steps stay in lockstep)."""
        return self.num_batches

    def _draw(self, pool: int, size: int, per_global: int, global_index: int, skip: int, count: int) -> list[int]:
        """``count`` indices of a pool for global batch ``global_index`` after ``skip``, from seeded permutations."""
        if 0 < per_global <= size:  # each cycle of the pool holds whole global batches
            cycle, slot = divmod(global_index, size // per_global)
            start = slot * per_global + skip
            return [int(i) for i in _permutation(self.seed, pool, cycle, size)[start : start + count]]
        out: list[int] = []
        pos = global_index * per_global + skip
        while len(out) < count:
            cycle, offset = divmod(pos, size)
            take = min(count - len(out), size - offset)
            out.extend(int(i) for i in _permutation(self.seed, pool, cycle, size)[offset : offset + take])
            pos += take
        return out

    def rank_batch(self, global_index: int, rank: int) -> list[int]:
        """Indices rank ``rank`` gets in global batch ``global_index``: paired first, then unpaired."""
        # each rank's unpaired count; the remainder rotates over the ranks, so the global count stays exact
        base, extra = divmod(self.unpaired_per_global, self.num_replicas)
        counts = [base + (1 if (r - global_index) % self.num_replicas < extra else 0) for r in range(self.num_replicas)]
        u_before, u_here = sum(counts[:rank]), counts[rank]
        p_before, p_here = rank * self.batch_size - u_before, self.batch_size - u_here
        paired = self._draw(_PAIRED, self.n_paired, self.paired_per_global, global_index, p_before, p_here)
        unpaired = self._draw(_UNPAIRED, self.n_unpaired, self.unpaired_per_global, global_index, u_before, u_here)
        return paired + [self.n_paired + i for i in unpaired]

    def rank_keys(self, global_index: int, rank: int) -> list[tuple[int, int]]:
        """``rank_batch`` with each global slot's seed (not the loading rank's or worker's): crops repeat on resume."""
        slots = range(rank * self.batch_size, (rank + 1) * self.batch_size)
        seeds = (np.random.SeedSequence([self.seed, global_index, s]).generate_state(1, np.uint64)[0] for s in slots)
        return [(index, int(seed)) for index, seed in zip(self.rank_batch(global_index, rank), seeds)]

    def __iter__(self) -> Iterator[list[Any]]:
        """This rank's batches for the current epoch: index lists, or ``(index, seed)`` lists when keyed."""
        first = self.epoch * self.num_batches
        batch_of = self.rank_keys if self.keyed else self.rank_batch
        start, self._start = self._start, 0
        for b in range(start, self.num_batches):
            yield batch_of(first + b, self.rank)


class KeyedConcatDataset(ConcatDataset[dict[str, Any]]):
    """``ConcatDataset`` that also takes ``(index, seed)`` keys, passing the seed on to the part holding ``index``."""

    def __getitem__(self, key: int | SampleKey) -> dict[str, Any]:
        index, seed = split_key(key)
        if seed is None:
            return super().__getitem__(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        part = bisect.bisect_right(self.cumulative_sizes, index)
        offset = self.cumulative_sizes[part - 1] if part else 0
        return self.datasets[part][(index - offset, seed)]
