"""Speed work must not change the maths: fused channel-attention backward, activation checkpointing, and our
Lightning step against the authors'-style reference step (benchmarks/bench.py) in fp32."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from drn_lightning.models.drn import DRN, RCAB, ChannelAttention, _ChannelGate, _FusedRCAB

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


def test_fused_rcab_backward_passes_gradcheck() -> None:
    torch.manual_seed(0)
    block = RCAB(8, reduction=4).double()
    x = torch.randn(2, 8, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_FusedRCAB.apply, (x, *block._fused_weights()))


def _run_block(block: RCAB, x: torch.Tensor, grad_out: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    out = block(x)
    return out.detach(), list(torch.autograd.grad(out, [x, *block.parameters()], grad_out))


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_fused_rcab_matches_the_authors_module_path(memory_format: torch.memory_format, monkeypatch) -> None:
    torch.manual_seed(0)
    block = RCAB(32).to(memory_format=memory_format).train()
    x = (torch.randn(2, 32, 9, 7) * 5).contiguous(memory_format=memory_format).requires_grad_()
    grad_out = torch.randn(2, 32, 9, 7).contiguous(memory_format=memory_format)
    out_fused, grads_fused = _run_block(block, x, grad_out)  # _FusedRCAB: hand-written backward
    monkeypatch.setattr(RCAB, "fused", False)
    monkeypatch.setattr(ChannelAttention, "fused_backward", False)
    out_plain, grads_plain = _run_block(block, x, grad_out)  # modules + plain autograd (the authors')
    torch.testing.assert_close(out_fused, out_plain, rtol=1e-6, atol=1e-5)
    for fused, plain in zip(grads_fused, grads_plain):
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    assert out_fused.is_contiguous(memory_format=memory_format)
    assert grads_fused[0].is_contiguous(memory_format=memory_format)


def test_fused_rcab_inference_and_eval_autograd_match_training_forward() -> None:
    torch.manual_seed(0)
    block = RCAB(16, reduction=4)
    x = torch.randn(1, 16, 6, 6) * 3
    train_out = block.train()(x.requires_grad_())
    with torch.inference_mode():
        infer_out = block.eval()(x.detach())
    assert torch.equal(train_out.detach(), infer_out)  # one forward function for both
    x_eval = x.detach().clone().requires_grad_()  # eval with grad (e.g. adapting a model): plain autograd
    eval_out = block.eval()(x_eval)
    grad_eval, = torch.autograd.grad(eval_out.sum(), x_eval)
    grad_train, = torch.autograd.grad(block.train()(x).sum(), x)
    torch.testing.assert_close(grad_eval, grad_train, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_channel_gate_fallback_matches_autograd(memory_format: torch.memory_format, monkeypatch) -> None:
    """The module path (autocast, half precision) keeps the gate's hand-written backward."""
    monkeypatch.setattr(RCAB, "fused", False)
    torch.manual_seed(0)
    block = RCAB(32).to(memory_format=memory_format).train()
    x = (torch.randn(2, 32, 9, 7) * 5).contiguous(memory_format=memory_format).requires_grad_()
    grad_out = torch.randn(2, 32, 9, 7).contiguous(memory_format=memory_format)
    out_gate, grads_gate = _run_block(block, x, grad_out)
    monkeypatch.setattr(ChannelAttention, "fused_backward", False)
    out_plain, grads_plain = _run_block(block, x, grad_out)
    assert torch.equal(out_gate, out_plain)  # same forward ops, bit for bit
    for gate, plain in zip(grads_gate, grads_plain):
        torch.testing.assert_close(gate, plain, rtol=1e-5, atol=1e-6)
    assert grads_gate[0].is_contiguous(memory_format=memory_format)


def test_rcab_under_autocast_takes_the_module_path() -> None:
    torch.manual_seed(0)
    block = RCAB(16, reduction=4).train()
    x = (torch.randn(2, 16, 6, 6) * 3).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
        reference = block.body(x)  # the modules, as autocast runs them, then the in-place residual
        reference += x
    assert out.dtype == torch.bfloat16  # the fused path would promote to x's float32 in its addcmul
    torch.testing.assert_close(out.float(), reference.float(), rtol=0, atol=0)
    out.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())


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


def _saved_activation_bytes(net: DRN, lr: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward of one forward pass (what activation checkpointing trades away)."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if not isinstance(tensor, torch.nn.Parameter):
            total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        sum(out.abs().mean() for out in net(lr)).backward()
    return total


def test_checkpoint_blocks_is_a_config_option_that_saves_activation_memory(tmp_path: Path) -> None:
    from conftest import compose_train
    from hydra.utils import instantiate

    cfg = compose_train(["model=drn_s", "model.net.n_blocks=12", "model.net.checkpoint_blocks=true"], tmp_path, tmp_path)
    primal, _ = instantiate(cfg.model.net)
    assert primal.checkpoint_blocks is True
    plain, _ = instantiate(compose_train(["model=drn_s", "model.net.n_blocks=12"], tmp_path, tmp_path).model.net)
    assert plain.checkpoint_blocks is False
    lr = torch.rand(1, 3, 12, 12) * 255
    # Each RCAB keeps only its input instead of ~5 full-size tensors: well under half of the plain total.
    assert _saved_activation_bytes(primal, lr) < 0.5 * _saved_activation_bytes(plain, lr)


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


@pytest.mark.slow
def test_torch_compile_of_the_fused_blocks_matches_eager() -> None:
    """`compile=true` traces `_FusedRCAB` (a custom autograd Function) without graph breaks and the same maths."""
    import torch._dynamo

    from drn_lightning.models import build_drn

    torch.manual_seed(0)
    primal, _ = build_drn("drn_tiny", 4, dual=False)
    x = torch.rand(2, 3, 12, 12) * 255
    eager_loss = sum(out.abs().mean() for out in primal(x))
    eager_loss.backward()
    eager_grads = [p.grad.clone() for p in primal.parameters()]
    primal.zero_grad()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled_loss = sum(out.abs().mean() for out in torch.compile(primal)(x))
    compiled_loss.backward()
    assert not torch._dynamo.utils.counters["graph_break"]
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=0)
    for eager, p in zip(eager_grads, primal.parameters()):
        torch.testing.assert_close(p.grad, eager, rtol=1e-4, atol=1e-4 * float(eager.abs().max()))
