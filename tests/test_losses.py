"""DRN loss on hand-computed values: constant images make every L1 term a plain |a - b|."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from drn_lightning.training.losses import DRNLoss


def const(value: float, size: int, batch_values: list[float] | None = None) -> torch.Tensor:
    values = batch_values if batch_values is not None else [value]
    return torch.stack([torch.full((3, size, size), float(v)) for v in values])


def averaging_duals(levels: int) -> nn.ModuleList:
    """A stand-in dual that maps a constant image to the same constant, so L1 terms stay hand-computable."""
    return nn.ModuleList(nn.AvgPool2d(2) for _ in range(levels))


def x4_batch(hr_values: list[float]) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    n = len(hr_values)
    outputs = [const(10, 2, [10] * n), const(20, 4, [20] * n), const(30, 8, [30] * n)]
    lr = [const(12, 2, [12] * n), const(25, 4, [25] * n)]
    hr = const(0, 8, hr_values)
    return outputs, lr, hr


def test_paired_loss_matches_hand_computation() -> None:
    outputs, lr, hr = x4_batch([40.0])
    terms = DRNLoss(dual_weight=0.1)(outputs, lr, hr, averaging_duals(2))
    # primal: |30-40| + |10-12| + |20-25| = 17; dual: |20-12| + |30-25| = 13
    assert terms["primal"].item() == pytest.approx(17.0)
    assert terms["dual"].item() == pytest.approx(13.0)
    assert terms["loss"].item() == pytest.approx(17.0 + 0.1 * 13.0)


def test_unpaired_sample_contributes_only_hr_free_dual_terms() -> None:
    outputs, lr, hr = x4_batch([1000.0])  # the HR value must not matter for an unpaired sample
    terms = DRNLoss(dual_weight=0.1, unpaired_chain=True)(
        outputs, lr, hr, averaging_duals(2), paired=torch.tensor([False])
    )
    # dual_0: |20-12| = 8; chained D0(D1(30)) = 30 vs LR 12 -> 18; no primal term
    assert terms["primal"].item() == 0.0
    assert terms["dual"].item() == pytest.approx(26.0)
    assert terms["loss"].item() == pytest.approx(2.6)
    no_chain = DRNLoss(dual_weight=0.1)(  # the default: the paper's one dual term per level
        outputs, lr, hr, averaging_duals(2), paired=torch.tensor([False])
    )
    assert no_chain["loss"].item() == pytest.approx(0.8)


def test_mixed_batch_normalises_by_batch_size() -> None:
    outputs, lr, hr = x4_batch([40.0, 1000.0])
    terms = DRNLoss(dual_weight=0.1, unpaired_chain=True)(
        outputs, lr, hr, averaging_duals(2), paired=torch.tensor([True, False])
    )
    assert terms["primal"].item() == pytest.approx(17.0 / 2)
    assert terms["dual"].item() == pytest.approx((13.0 + 26.0) / 2)
    assert terms["loss"].item() == pytest.approx(8.5 + 0.1 * 19.5)


def test_all_paired_mask_equals_unmasked_authors_loss() -> None:
    torch.manual_seed(0)
    outputs = [torch.rand(3, 3, 4 * 2**k, 4 * 2**k) * 255 for k in range(3)]
    lr = [torch.rand(3, 3, 4 * 2**k, 4 * 2**k) * 255 for k in range(2)]
    hr = torch.rand(3, 3, 16, 16) * 255
    duals = averaging_duals(2)
    l1 = nn.L1Loss()
    authors = l1(outputs[-1], hr) + l1(outputs[0], lr[0]) + l1(outputs[1], lr[1])
    authors = authors + 0.1 * (l1(duals[0](outputs[1]), lr[0]) + l1(duals[1](outputs[2]), lr[1]))
    unmasked = DRNLoss()(outputs, lr, hr, duals)["loss"]
    masked = DRNLoss()(outputs, lr, hr, duals, paired=torch.ones(3, dtype=torch.bool))["loss"]
    torch.testing.assert_close(unmasked, authors)
    torch.testing.assert_close(masked, authors)


def test_no_duals_is_plain_supervised() -> None:
    outputs, lr, hr = x4_batch([40.0])
    terms = DRNLoss(dual_weight=0.1)(outputs, lr, hr, None)
    assert terms["loss"].item() == pytest.approx(17.0)
    assert terms["dual"].item() == 0.0


def test_unpaired_gradient_does_not_reach_hr_branch_targets() -> None:
    outputs, lr, hr = x4_batch([40.0])
    hr.requires_grad_(True)
    outputs = [o.clone().requires_grad_(True) for o in outputs]
    DRNLoss(unpaired_chain=False)(outputs, lr, hr, averaging_duals(2), paired=torch.tensor([False]))["loss"].backward()
    assert outputs[0].grad.abs().sum() == 0  # LR-size output is compared with paired targets only
    assert outputs[1].grad.abs().sum() > 0  # D_0(2x output) vs input LR
    assert outputs[2].grad.abs().sum() == 0


def test_wrong_number_of_levels_raises() -> None:
    outputs, lr, hr = x4_batch([40.0])
    with pytest.raises(ValueError, match="expected 3 primal outputs"):
        DRNLoss()(outputs[:2], lr, hr)
