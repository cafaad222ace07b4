"""Speed work must not change the maths: fused channel-attention backward, activation checkpointing, and our
Lightning step against the authors'-style reference step (benchmarks/bench.py) in fp32."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from drn_lightning.models.drn import DRN, RCAB, _ChannelGate

REPO = Path(__file__).resolve().parents[1]


def load_bench():
    """benchmarks/bench.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("drn_bench", REPO / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("drn_bench", module)
    spec.loader.exec_module(module)
    return module


def test_channel_gate_backward_passes_gradcheck() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 4, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(2, 8, 1, 1, dtype=torch.float64, requires_grad=True)
    b1 = torch.randn(2, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(8, 2, 1, 1, dtype=torch.float64, requires_grad=True)
    b2 = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_ChannelGate.apply, (x, w1, b1, w2, b2))


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_fused_training_path_matches_autograd(memory_format: torch.memory_format) -> None:
    torch.manual_seed(0)
    block = RCAB(32).to(memory_format=memory_format)
    x = (torch.randn(2, 32, 9, 7) * 5).contiguous(memory_format=memory_format).requires_grad_()
    grad_out = torch.randn(2, 32, 9, 7).contiguous(memory_format=memory_format)
    results = []
    for training in (True, False):  # train: fused backward; eval with grad: plain autograd
        block.train(training)
        out = block(x)
        results.append((out, torch.autograd.grad(out, [x, *block.parameters()], grad_out)))
    (out_fused, grads_fused), (out_plain, grads_plain) = results
    assert torch.equal(out_fused, out_plain)  # same forward ops, bit for bit
    for fused, plain in zip(grads_fused, grads_plain):
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    assert grads_fused[0].is_contiguous(memory_format=memory_format)


def test_checkpoint_blocks_keeps_keys_loss_and_gradients() -> None:
    torch.manual_seed(0)
    plain = DRN(scale=4, n_feats=8, n_blocks=2)
    ckpt = DRN(scale=4, n_feats=8, n_blocks=2, checkpoint_blocks=True)
    assert list(plain.state_dict()) == list(ckpt.state_dict())
    ckpt.load_state_dict(plain.state_dict())
    lr = torch.rand(2, 3, 10, 10) * 255
    losses = []
    for net in (plain, ckpt):
        loss = sum(out.abs().mean() for out in net(lr))
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    for p, q in zip(plain.parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-6)


def test_lightning_step_matches_authors_reference_step(tmp_path: Path) -> None:
    """Same weights and batch: our Trainer.fit (channels_last, fused gate, one Adam) vs the authors' loop."""
    bench = load_bench()
    variant, scale = "drn_tiny", 4
    batch = bench.fixed_batch(scale, lr_size=12, batch=2)
    primal, duals = bench.make_networks(variant, scale)
    reference = bench.reference_losses(primal, duals, batch, steps=2, **bench.config_adam(variant, scale))
    ours, module = bench.lightning_losses(variant, scale, batch, steps=2, workdir=str(tmp_path))
    assert len(ours) == 2
    assert module.primal.head.weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(ours, reference):  # step 0: initial weights; step 1: after one optimiser step
        assert abs(a - b) <= bench.NUMERICS_RTOL * abs(b), (ours, reference)
