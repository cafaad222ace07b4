"""The DRN objective: multi-scale L1 on the primal outputs plus lambda times L1 on the dual reconstructions.

Pixels are in 0-255 as in the authors' code, so lambda = 0.1 means what it means in the paper. For
semi-supervised batches every term is a per-sample L1 mean, masked to the samples for which its target
exists and normalised by the batch size, i.e. eq. (3) of the paper:
    L = 1/N * sum_i [ paired_i * (L_P(x_i, y_i) + lambda * L_D(x_i, y_i)) + (1 - paired_i) * lambda * L_D(x_i) ].
For an unpaired sample L_D(x_i) = L1(D_0(P(x)_2x), x), one dual term per x2 level as the authors' trainer has it;
`unpaired_chain=True` adds L1(D_0(...D_{S-1}(P(x)_final)), x), this project's extension (not in the paper).
Pass `paired=None` for fully paired data: no mask and no chained term are computed.
With every sample paired this equals the authors' `L1(sr, hr) + sum L1(sr_k, lr_k) + 0.1 * sum L1(D_k(.), lr_k)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def per_sample_l1(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error of each sample, shape (N,), so terms can be masked per sample."""
    return (prediction - target).abs().flatten(1).mean(dim=1)


class DRNLoss(nn.Module):
    """Primal multi-scale L1 + `dual_weight` x dual L1, with per-sample masks for unpaired data."""

    def __init__(self, dual_weight: float = 0.1, unpaired_chain: bool = False) -> None:
        super().__init__()
        if dual_weight < 0:
            raise ValueError(f"dual_weight={dual_weight} must be >= 0")
        self.dual_weight = float(dual_weight)
        # For unpaired samples only the input LR is known; chaining the duals maps the finest output
        # all the way back to it, which closes the loop over the whole primal network, not just its 2x branch.
        self.unpaired_chain = unpaired_chain

    def forward(
        self,
        outputs: Sequence[Tensor],
        lr_pyramid: Sequence[Tensor],
        hr: Tensor,
        duals: nn.ModuleList | None = None,
        paired: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Loss terms for one batch.

        `outputs` are the primal's images coarse to fine (LR size ... HR size); `lr_pyramid` the LR levels
        coarse to fine without HR (x4: [LR, LRx2]); `paired` a bool (N,) mask (None = all paired).
        Returns `loss` (to optimise), `primal` and `dual` (their batch means, for logging).
        """
        levels = len(lr_pyramid)
        if len(outputs) != levels + 1:
            raise ValueError(f"expected {levels + 1} primal outputs for {levels} LR levels, got {len(outputs)}")
        batch = hr.shape[0]
        mask = (
            torch.ones(batch, dtype=hr.dtype, device=hr.device)
            if paired is None
            else paired.to(device=hr.device, dtype=hr.dtype).reshape(batch)
        )
        inv_batch = 1.0 / batch

        primal = per_sample_l1(outputs[-1], hr)
        for k in range(levels):
            primal = primal + per_sample_l1(outputs[k], lr_pyramid[k])
        primal_term = (primal * mask).sum() * inv_batch

        if duals is None or self.dual_weight == 0:
            zero = primal_term.new_zeros(())
            return {"loss": primal_term, "primal": primal_term.detach(), "dual": zero}

        # reconstructions[k] = D_k(output at level k+1), compared with LR level k.
        reconstructions = [duals[k](outputs[k + 1]) for k in range(levels)]
        # Level 0's target (the input LR) exists for every sample; finer targets only for paired ones.
        dual_all = per_sample_l1(reconstructions[0], lr_pyramid[0])
        dual_paired = dual_all.new_zeros(batch)
        for k in range(1, levels):
            dual_paired = dual_paired + per_sample_l1(reconstructions[k], lr_pyramid[k])
        dual = dual_all + dual_paired * mask
        if self.unpaired_chain and levels > 1 and paired is not None:
            chained = outputs[-1]
            for k in range(levels - 1, -1, -1):
                chained = duals[k](chained)
            dual = dual + per_sample_l1(chained, lr_pyramid[0]) * (1 - mask)
        dual_term = dual.sum() * inv_batch
        total = primal_term + self.dual_weight * dual_term
        return {"loss": total, "primal": primal_term.detach(), "dual": dual_term.detach()}
