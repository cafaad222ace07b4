"""Speed work must not change the maths: activation checkpointing, torch.compile, and our Lightning step against
the authors'-style reference step (benchmarks/cases/train.py) in fp32."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from drn_lightning.models.drn import DRN

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from cases import train as bench  # benchmarks/ holds scripts, not a package


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
    from hydra.utils import instantiate

    from conftest import compose_train

    cfg = compose_train(
        ["model=drn_s", "model.net.n_blocks=12", "model.net.checkpoint_blocks=true"], tmp_path, tmp_path
    )
    primal = instantiate(cfg.model.net)
    assert primal.checkpoint_blocks is True
    plain = instantiate(compose_train(["model=drn_s", "model.net.n_blocks=12"], tmp_path, tmp_path).model.net)
    assert plain.checkpoint_blocks is False
    lr = torch.rand(1, 3, 12, 12) * 255
    # Each RCAB keeps only its input instead of ~5 full-size tensors: well under half of the plain total.
    assert _saved_activation_bytes(primal, lr) < 0.5 * _saved_activation_bytes(plain, lr)


def test_lightning_step_matches_authors_reference_step(tmp_path: Path) -> None:
    """Same weights and batch: our Trainer.fit (channels_last, fused Adam, one optimiser) vs the authors' loop."""
    variant, scale = "drn_tiny", 4
    batch = bench.fixed_batch(scale, lr_size=12, batch=2)
    primal, duals = bench.make_networks(variant, scale)
    reference_trainer = bench.ReferenceTrainer(primal, duals, **bench.config_adam(variant, scale))
    reference = [reference_trainer.step(batch["lr"], batch["hr"]) for _ in range(2)]
    ours, module = bench.lightning_losses(variant, scale, batch, steps=2, workdir=str(tmp_path))
    assert len(ours) == 2
    assert module.primal.head.weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(ours, reference):  # step 0: initial weights; step 1: after one optimiser step
        assert abs(a - b) <= bench.NUMERICS_RTOL * abs(b), (ours, reference)


@pytest.mark.slow
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
def test_torch_compile_of_the_network_matches_eager(autocast: bool) -> None:
    """`compile=true` traces the DRN without graph breaks and the same maths, in fp32 and under bf16 autocast
    (the GPU recipe: bf16-mixed + compile)."""
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
