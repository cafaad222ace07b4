"""MixedBatchSampler: exact unpaired share per global batch, sharding, determinism, epochs."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from lightning_fabric.utilities.data import _set_sampler_epoch
from torch.utils.data import DataLoader

from drn_lightning.data.samplers import MixedBatchSampler


def _all_ranks(**kw: int | float) -> list[MixedBatchSampler]:
    world = int(kw.get("num_replicas", 1))
    return [MixedBatchSampler(**{**kw, "rank": r}) for r in range(world)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "rho,batch,world",
    [(0.3, 10, 1), (0.3, 10, 2), (0.25, 4, 3), (0.5, 1, 4), (0.1, 8, 2), (0.7, 5, 3), (0.33, 6, 4), (0.0, 7, 2)],
)
def test_exact_unpaired_share_per_global_batch(rho: float, batch: int, world: int) -> None:
    n_p, n_u = 50, 40
    samplers = _all_ranks(
        n_paired=n_p, n_unpaired=n_u, batch_size=batch, unpaired_ratio=rho, num_batches=12, num_replicas=world, seed=7
    )
    expected_u = int(rho * batch * world + 0.5)  # round half up, computed independently
    per_rank = [list(s) for s in samplers]
    for b in range(12):
        rank_batches = [per_rank[r][b] for r in range(world)]
        assert all(len(rb) == batch for rb in rank_batches)
        merged = [i for rb in rank_batches for i in rb]
        unpaired = [i for i in merged if i >= n_p]
        assert len(unpaired) == expected_u
        assert all(0 <= i < n_p + n_u for i in merged)
        assert len(set(merged)) == len(merged), "ranks must not share samples within a global batch"
        counts = [sum(i >= n_p for i in rb) for rb in rank_batches]
        assert max(counts) - min(counts) <= 1


def test_mixed_example_three_of_ten() -> None:
    (s,) = _all_ranks(n_paired=20, n_unpaired=20, batch_size=10, unpaired_ratio=0.3, num_batches=5)
    for batch in s:
        assert sum(i >= 20 for i in batch) == 3


def test_rho_zero_has_no_unpaired() -> None:
    (s,) = _all_ranks(n_paired=9, n_unpaired=30, batch_size=4, unpaired_ratio=0.0, num_batches=20)
    assert all(i < 9 for batch in s for i in batch)


def test_deterministic_under_seed_and_seed_matters() -> None:
    kw = {
        "n_paired": 30,
        "n_unpaired": 15,
        "batch_size": 6,
        "unpaired_ratio": 0.4,
        "num_batches": 10,
        "num_replicas": 2,
        "rank": 1,
    }
    a, b = MixedBatchSampler(**kw, seed=3), MixedBatchSampler(**kw, seed=3)  # type: ignore[arg-type]
    assert list(a) == list(b) == list(a)
    assert list(MixedBatchSampler(**kw, seed=4)) != list(a)  # type: ignore[arg-type]


def test_epochs_differ_and_cover_every_sample_equally() -> None:
    n_p = 12
    s = MixedBatchSampler(n_paired=n_p, n_unpaired=0, batch_size=4, unpaired_ratio=0.0, num_batches=3)
    epochs = []
    for e in range(4):
        s.set_epoch(e)
        epochs.append([i for batch in s for i in batch])
    assert epochs[0] != epochs[1]
    for drawn in epochs:  # 3 batches x 4 = one full permutation per epoch here
        assert sorted(drawn) == list(range(n_p))
    s.set_epoch(1)
    assert [i for batch in s for i in batch] == epochs[1], "an epoch's batches depend only on the epoch"
    # when an epoch is shorter than the pool, later epochs continue the permutation
    short = MixedBatchSampler(n_paired=10, n_unpaired=0, batch_size=2, unpaired_ratio=0.0, num_batches=2)
    drawn = []
    for e in range(5):
        short.set_epoch(e)
        drawn += [i for batch in short for i in batch]
    assert Counter(drawn) == Counter(dict.fromkeys(range(10), 2))


def test_lightning_epoch_hook_reaches_the_sampler() -> None:
    s = MixedBatchSampler(n_paired=8, n_unpaired=0, batch_size=2, unpaired_ratio=0.0, num_batches=2)
    loader = DataLoader(list(range(8)), batch_sampler=s)
    _set_sampler_epoch(loader, 5)  # what Lightning's fit loop calls at every epoch start
    assert s.epoch == 5
    s2 = MixedBatchSampler(n_paired=8, n_unpaired=0, batch_size=2, unpaired_ratio=0.0, num_batches=2)
    s2.set_epoch(5)
    assert [b.tolist() for b in loader] == [torch.tensor(b).tolist() for b in s2]


@pytest.mark.parametrize("rho", [1.0, -0.1, 1.5, float("nan")])
def test_ratio_out_of_range(rho: float) -> None:
    with pytest.raises(ValueError, match="unpaired_ratio"):
        MixedBatchSampler(n_paired=4, n_unpaired=4, batch_size=4, unpaired_ratio=rho, num_batches=1)


def test_invalid_configurations() -> None:
    with pytest.raises(ValueError, match="n_unpaired"):
        MixedBatchSampler(n_paired=4, n_unpaired=0, batch_size=4, unpaired_ratio=0.5, num_batches=1)
    with pytest.raises(ValueError, match="no paired sample"):
        MixedBatchSampler(n_paired=4, n_unpaired=4, batch_size=2, unpaired_ratio=0.9, num_batches=1)
    with pytest.raises(ValueError, match="rank"):
        MixedBatchSampler(
            n_paired=4, n_unpaired=4, batch_size=2, unpaired_ratio=0.0, num_batches=1, num_replicas=2, rank=2
        )
    with pytest.raises(ValueError, match="batch_size"):
        MixedBatchSampler(n_paired=4, n_unpaired=4, batch_size=0, unpaired_ratio=0.0, num_batches=1)
    with pytest.raises(ValueError, match="n_paired"):
        MixedBatchSampler(n_paired=0, n_unpaired=4, batch_size=2, unpaired_ratio=0.0, num_batches=1)


def test_len_is_batches_per_rank() -> None:
    s = MixedBatchSampler(n_paired=5, n_unpaired=5, batch_size=3, unpaired_ratio=0.2, num_batches=17, num_replicas=2)
    assert len(s) == 17 == len(list(s))


def test_no_sample_reused_within_a_pass() -> None:
    # 14 paired per global batch from a pool of 50: 3 whole global batches per permutation
    ranks = _all_ranks(n_paired=50, n_unpaired=0, batch_size=7, unpaired_ratio=0.0, num_batches=9, num_replicas=2)
    per_rank = [list(s) for s in ranks]
    for first in (0, 3, 6):
        drawn = [i for b in range(first, first + 3) for r in range(2) for i in per_rank[r][b]]
        assert len(drawn) == 42 == len(set(drawn))


def test_pool_smaller_than_a_batch_cycles() -> None:
    (s,) = _all_ranks(n_paired=3, n_unpaired=0, batch_size=9, unpaired_ratio=0.0, num_batches=2)
    for batch in s:
        assert Counter(batch) == Counter({0: 3, 1: 3, 2: 3})


def test_keyed_batches_pair_each_index_with_the_seed_of_its_global_slot() -> None:
    kw = {
        "n_paired": 30,
        "n_unpaired": 20,
        "batch_size": 4,
        "unpaired_ratio": 0.25,
        "num_batches": 3,
        "num_replicas": 2,
        "seed": 7,
    }
    plain = _all_ranks(**kw)
    keyed = [MixedBatchSampler(**{**kw, "rank": r, "keyed": True}) for r in range(2)]  # type: ignore[arg-type]
    for p, k in zip(plain, keyed, strict=True):
        p.set_epoch(1)
        k.set_epoch(1)
        plain_batches, keyed_batches = list(p), list(k)
        assert all(isinstance(i, int) for b in plain_batches for i in b)
        assert [[i for i, _ in b] for b in keyed_batches] == plain_batches
    seeds = [s for k in keyed for b in k for _, s in b]
    assert len(seeds) == 2 * 3 * 4 and len(set(seeds)) == len(seeds)  # every slot of every global batch differs
    again = MixedBatchSampler(**{**kw, "rank": 1, "keyed": True})  # type: ignore[arg-type]
    again.set_epoch(1)
    assert list(again) == list(keyed[1])
    other_seed = MixedBatchSampler(**{**kw, "rank": 1, "keyed": True, "seed": 8})  # type: ignore[arg-type]
    other_seed.set_epoch(1)
    assert {s for b in other_seed for _, s in b}.isdisjoint(seeds)
