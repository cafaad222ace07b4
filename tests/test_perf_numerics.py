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


def _relative_error(value: torch.Tensor, truth: torch.Tensor) -> float:
    return float((value.detach().float() - truth.detach()).norm() / truth.detach().norm())


@pytest.mark.parametrize("train", [True, False])
def test_rcab_under_bf16_autocast_runs_fused_in_bf16_as_close_as_the_modules(train: bool, monkeypatch) -> None:
    """Under autocast the fused block casts once and runs in bf16: as close to fp32 as autocast on the modules."""
    torch.manual_seed(0)
    block = RCAB(32, reduction=4).to(memory_format=torch.channels_last).train(train)
    x = (torch.randn(2, 32, 16, 12) * 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    grad_out = torch.randn(2, 32, 16, 12).contiguous(memory_format=torch.channels_last)

    def run(fused: bool, autocast: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        monkeypatch.setattr(RCAB, "fused", fused)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = block(x)
        grads = torch.autograd.grad(out, [x, *block.parameters()], grad_out.to(out.dtype))
        return out, list(grads)

    calls = []
    monkeypatch.setattr(_FusedRCAB, "apply", lambda *a, _apply=_FusedRCAB.apply: calls.append(1) or _apply(*a))
    out_fp32, grads_fp32 = run(fused=True, autocast=False)
    calls.clear()
    out_fused, grads_fused = run(fused=True, autocast=True)
    assert bool(calls) == train  # the hand-written backward under autocast (inference: _rcab_forward)
    out_module, grads_module = run(fused=False, autocast=True)
    assert out_fused.dtype == out_module.dtype == torch.bfloat16
    assert out_fused.is_contiguous(memory_format=torch.channels_last)
    # bf16 keeps 8 mantissa bits (relative step 2^-8 = 3.9e-3): both paths sit at that level, and they agree.
    err_fused, err_module = _relative_error(out_fused, out_fp32), _relative_error(out_module, out_fp32)
    assert err_fused < 8e-3 and err_module < 8e-3
    assert _relative_error(out_fused, out_module.float()) < 8e-3
    for fused, module, exact in zip(grads_fused, grads_module, grads_fp32):
        assert fused.dtype == exact.dtype == torch.float32  # fp32 parameters get fp32 gradients
        if exact.norm() > 0:
            assert _relative_error(fused, exact) <= 2 * _relative_error(module, exact) + 1e-2


def test_bf16_spatial_reductions_accumulate_in_float32() -> None:
    """The bf16 mean/sum shortcut must not round its running sum to bf16 (9216 ones would stop at 256)."""
    from drn_lightning.models.drn import _spatial_mean, _spatial_sum

    ones = torch.ones(2, 3, 96, 96, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    assert torch.equal(_spatial_sum(ones), torch.full((2, 3), 9216.0))
    assert _spatial_sum(ones).dtype == torch.float32
    values = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    truth = values.double().mean(dim=(2, 3), keepdim=True)
    mean = _spatial_mean(values.bfloat16(), keepdim=True)
    assert mean.dtype == torch.bfloat16 and mean.shape == (2, 3, 1, 1)
    assert (mean.double() - truth).abs().max() < 4e-3  # one bf16 rounding of a value near 0.5
    half = torch.full((1, 2, 64, 64), 30.0, dtype=torch.float16)  # a native fp16 sum (122880) would overflow
    assert torch.isfinite(_spatial_sum(half)).all() and torch.equal(_spatial_mean(half, keepdim=True), half[:, :, :1, :1])


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
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
def test_torch_compile_of_the_fused_blocks_matches_eager(autocast: bool) -> None:
    """`compile=true` traces `_FusedRCAB` (a custom autograd Function) without graph breaks and the same maths,
    in fp32 and under bf16 autocast (the GPU recipe: bf16-mixed + compile)."""
    import torch._dynamo

    from drn_lightning.models import build_drn

    torch.manual_seed(0)
    primal, _ = build_drn("drn_tiny", 4, dual=False)
    x = torch.rand(2, 3, 12, 12) * 255

    def loss_of(net: torch.nn.Module) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return sum(out.float().abs().mean() for out in net(x))

    eager_loss = loss_of(primal)
    eager_loss.backward()
    eager_grads = [p.grad.clone() for p in primal.parameters()]
    primal.zero_grad()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled_loss = loss_of(torch.compile(primal))
    compiled_loss.backward()
    assert not torch._dynamo.utils.counters["graph_break"]
    tol = 2e-2 if autocast else 1e-4  # bf16: inductor may fuse and round in another order than eager
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=tol / 10, atol=0)
    for eager, p in zip(eager_grads, primal.parameters()):
        torch.testing.assert_close(p.grad, eager, rtol=tol, atol=tol * float(eager.abs().max()))
