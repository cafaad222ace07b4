"""DRN networks against the authors' structure: parameter counts, key names/shapes, forward shapes, weight files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from drn_lightning.models import (
    DRN,
    CheckpointError,
    build_drn,
    build_duals,
    load_official,
    load_weights,
    official_to_checkpoint,
    save_official,
)

# Published primal parameter counts (authors' code, mean-shift convs included).
PAPER_COUNTS = {
    ("drn_s", 4): 4_804_065,
    ("drn_l", 4): 9_825_893,
    ("drn_s", 8): 5_403_000,
    ("drn_l", 8): 10_004_018,
}
PAPER_SIZES = {("drn_s", 4): (16, 30), ("drn_l", 4): (20, 40), ("drn_s", 8): (8, 30), ("drn_l", 8): (10, 36)}


def authors_key_shapes(scale: int, F: int, B: int) -> dict[str, tuple[int, ...]]:
    """Expected keys and shapes, written out from the authors' model/drn.py and model/common.py construction."""
    phase = {2: 1, 4: 2, 8: 3}[scale]
    shapes: dict[str, tuple[int, ...]] = {}
    for name in ("sub_mean", "add_mean"):
        shapes[f"{name}.weight"] = (3, 3, 1, 1)
        shapes[f"{name}.bias"] = (3,)
    shapes["head.weight"], shapes["head.bias"] = (F, 3, 3, 3), (F,)
    for p in range(phase):
        c = F * 2**p
        shapes[f"down.{p}.dual_module.0.0.weight"] = (c, c, 3, 3)
        shapes[f"down.{p}.dual_module.1.weight"] = (2 * c, c, 3, 3)
    # RCAB widths: first stage F*2^phase, then F*2^p for p = phase..2 (concatenated features).
    rcab_widths = [F * 2**phase] + [F * 2**p for p in range(phase, 1, -1)]
    up_in = [F * 2**phase] + [2 * F * 2**p for p in range(phase - 1, 0, -1)]
    up_out = [F * 2 ** (phase - 1)] + [F * 2 ** (p - 1) for p in range(phase - 1, 0, -1)]
    for idx in range(phase):
        c = rcab_widths[idx]
        r = c // 16
        for j in range(B):
            pre = f"up_blocks.{idx}.{j}.body"
            shapes[f"{pre}.0.weight"], shapes[f"{pre}.0.bias"] = (c, c, 3, 3), (c,)
            shapes[f"{pre}.2.weight"], shapes[f"{pre}.2.bias"] = (c, c, 3, 3), (c,)
            shapes[f"{pre}.3.conv_du.0.weight"], shapes[f"{pre}.3.conv_du.0.bias"] = (r, c, 1, 1), (r,)
            shapes[f"{pre}.3.conv_du.2.weight"], shapes[f"{pre}.3.conv_du.2.bias"] = (c, r, 1, 1), (c,)
        shapes[f"up_blocks.{idx}.{B}.0.weight"] = (4 * up_in[idx], up_in[idx], 3, 3)
        shapes[f"up_blocks.{idx}.{B}.0.bias"] = (4 * up_in[idx],)
        shapes[f"up_blocks.{idx}.{B + 1}.weight"] = (up_out[idx], up_in[idx], 1, 1)
        shapes[f"up_blocks.{idx}.{B + 1}.bias"] = (up_out[idx],)
    tails = [F * 2**phase] + [F * 2**p for p in range(phase, 0, -1)]
    for k, c in enumerate(tails):
        shapes[f"tail.{k}.weight"], shapes[f"tail.{k}.bias"] = (3, c, 3, 3), (3,)
    return shapes


@pytest.mark.parametrize(("variant", "scale"), list(PAPER_COUNTS))
def test_primal_parameter_count_matches_authors(variant: str, scale: int) -> None:
    primal, duals = build_drn(variant, scale)
    assert sum(p.numel() for p in primal.parameters()) == PAPER_COUNTS[(variant, scale)]
    F = PAPER_SIZES[(variant, scale)][0]
    assert len(duals) == {4: 2, 8: 3}[scale]
    for dual in duals:
        assert sum(p.numel() for p in dual.parameters()) == 54 * F


@pytest.mark.parametrize(("variant", "scale"), list(PAPER_COUNTS))
def test_state_dict_keys_and_shapes_match_authors(variant: str, scale: int) -> None:
    primal, duals = build_drn(variant, scale)
    F, B = PAPER_SIZES[(variant, scale)]
    expected = authors_key_shapes(scale, F, B)
    got = {k: tuple(v.shape) for k, v in primal.state_dict().items()}
    assert got == expected
    for dual in duals:
        assert {k: tuple(v.shape) for k, v in dual.state_dict().items()} == {
            "dual_module.0.0.weight": (F, 3, 3, 3),
            "dual_module.1.weight": (3, F, 3, 3),
        }


def test_named_examples_from_the_released_files() -> None:
    primal, _ = build_drn("drn_s", 4)
    sd = primal.state_dict()
    for key in (
        "head.weight",
        "down.0.dual_module.0.0.weight",
        "up_blocks.0.3.body.3.conv_du.0.weight",
        "tail.2.weight",
        "sub_mean.weight",
    ):
        assert key in sd
    assert tuple(sd["up_blocks.0.3.body.3.conv_du.0.weight"].shape) == (4, 64, 1, 1)  # 64 channels // 16


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_forward_shapes_on_odd_sizes(scale: int) -> None:
    torch.manual_seed(0)
    primal = DRN(scale=scale, n_feats=8, n_blocks=2).eval()
    duals = build_duals(scale, 8)
    lr = torch.rand(2, 3, 17, 23) * 255
    with torch.no_grad():
        outs = primal(lr)
    levels = [2**i for i in range(len(outs))]
    assert levels[-1] == scale
    assert [tuple(o.shape) for o in outs] == [(2, 3, 17 * f, 23 * f) for f in levels]
    with torch.no_grad():
        for i, dual in enumerate(duals):
            assert dual(outs[i + 1]).shape == outs[i].shape


def test_mean_shift_is_exact_identity_pair() -> None:
    primal = DRN(scale=2, n_feats=8, n_blocks=1)
    x = torch.rand(1, 3, 5, 7) * 255
    with torch.no_grad():
        shifted = primal.sub_mean(x)
        torch.testing.assert_close(shifted, x - torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1) * 255)
        torch.testing.assert_close(primal.add_mean(shifted), x)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"scale": 3}, "scale=3"), ({"scale": 16}, "scale=16"), ({"scale": 4, "n_feats": 3}, "n_feats=3")],
)
def test_invalid_sizes_raise_naming_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DRN(**kwargs)


def test_unknown_variant_and_scale_raise() -> None:
    with pytest.raises(ValueError, match="variant='drn_xl'"):
        build_drn("drn_xl", 4)
    with pytest.raises(ValueError, match="scale=3"):
        build_drn("drn_s", 3)


def _randomise(*modules: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))


def _official_files(tmp_path: Path, variant: str, scale: int, **sizes: int) -> tuple[Path, Path, torch.nn.Module, list]:
    """Write a pair in the authors' exact format: plain state_dict and a Python list of dual state_dicts."""
    primal, duals = build_drn(variant, scale, **sizes)
    _randomise(primal, duals)
    primal_path, dual_path = tmp_path / f"{variant}{scale}x.pt", tmp_path / f"{variant}{scale}x_dual_model.pt"
    torch.save(primal.state_dict(), primal_path)
    torch.save([d.state_dict() for d in duals], dual_path)
    return primal_path, dual_path, primal, list(duals)


@pytest.mark.parametrize(("variant", "scale"), [("drn_s", 4), ("drn_l", 8)])
def test_load_infers_variant_and_roundtrips_bit_exact(tmp_path: Path, variant: str, scale: int) -> None:
    primal_path, dual_path, primal, duals = _official_files(tmp_path, variant, scale)
    loaded, loaded_duals, info = load_official(primal_path, dual_path)
    assert info["variant"] == variant and info["scale"] == scale
    assert (info["n_feats"], info["n_blocks"]) == PAPER_SIZES[(variant, scale)]
    save_official(loaded, loaded_duals, tmp_path / "out.pt", tmp_path / "out_dual.pt")
    raw_primal = torch.load(tmp_path / "out.pt", weights_only=True)
    raw_duals = torch.load(tmp_path / "out_dual.pt", weights_only=True)
    assert isinstance(raw_duals, list) and len(raw_duals) == len(duals)
    for key, value in primal.state_dict().items():
        assert torch.equal(raw_primal[key], value), key
    for dual, raw in zip(duals, raw_duals):
        for key, value in dual.state_dict().items():
            assert torch.equal(raw[key], value)
    again, _again_duals, _ = load_official(tmp_path / "out.pt", tmp_path / "out_dual.pt")
    x = torch.rand(1, 3, 6, 5) * 255
    with torch.no_grad():
        expected = primal(x)[-1]
        assert torch.isfinite(expected).all()
        assert torch.equal(again(x)[-1], expected)


def test_lightning_checkpoint_converts_both_ways(tmp_path: Path) -> None:
    primal_path, dual_path, primal, duals = _official_files(tmp_path, "drn_tiny", 4)
    loaded, loaded_duals, info = load_official(primal_path, dual_path)
    official_to_checkpoint(loaded, loaded_duals, info, tmp_path / "model.ckpt")
    from_ckpt, ckpt_duals, ckpt_info = load_weights(tmp_path / "model.ckpt")
    assert ckpt_info == info
    for a, b in zip(from_ckpt.state_dict().values(), primal.state_dict().values()):
        assert torch.equal(a, b)
    for da, db in zip(ckpt_duals, duals):
        for a, b in zip(da.state_dict().values(), db.state_dict().values()):
            assert torch.equal(a, b)


def test_wrong_variant_request_names_expected_and_found(tmp_path: Path) -> None:
    primal_path, dual_path, _, _ = _official_files(tmp_path, "drn_s", 4)
    with pytest.raises(CheckpointError, match=r"expected drn_l x4, found drn_s x4"):
        load_official(primal_path, dual_path, variant="drn_l", scale=4)
    with pytest.raises(CheckpointError, match=r"expected scale x8"):
        load_official(primal_path, scale=8)


def test_wrong_shape_is_reported_with_key(tmp_path: Path) -> None:
    primal, _ = build_drn("drn_tiny", 4)
    sd = primal.state_dict()
    sd["tail.2.weight"] = torch.zeros(3, 5, 3, 3)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt.*wrong shapes.*tail\.2\.weight"):
        load_official(tmp_path / "bad.pt")


def test_missing_key_is_reported(tmp_path: Path) -> None:
    primal, _ = build_drn("drn_tiny", 4)
    sd = primal.state_dict()
    del sd["up_blocks.1.2.body.0.bias"]
    torch.save(sd, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing keys.*up_blocks\.1\.2\.body\.0\.bias"):
        load_official(tmp_path / "missing.pt")


def test_dual_file_with_wrong_count_is_reported(tmp_path: Path) -> None:
    primal_path, _, _, duals = _official_files(tmp_path, "drn_tiny", 4)
    torch.save([duals[0].state_dict()], tmp_path / "one_dual.pt")
    with pytest.raises(CheckpointError, match=r"one_dual\.pt: expected 2 dual models"):
        load_official(primal_path, tmp_path / "one_dual.pt")


def test_non_tensor_pickle_is_refused(tmp_path: Path) -> None:
    torch.save({"head.weight": "not a tensor", "epoch": 3}, tmp_path / "strings.pt")
    with pytest.raises(CheckpointError, match=r"strings\.pt: expected a primal state_dict of tensors"):
        load_official(tmp_path / "strings.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt: expected a primal state_dict"):
        load_official(tmp_path / "list.pt")


class _Payload:
    """Unpickling this object would create a marker file: proof of code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("suffix", [".pt", ".ckpt"])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    torch.save({"state_dict": {"primal.head.weight": torch.zeros(1)}, "x": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil.*refused"):
        load_weights(path)
    assert not marker.exists()
    # The same payload through plain pickle (not a torch zip) is refused too.
    raw = tmp_path / f"raw{suffix}"
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match=r"raw"):
        load_weights(raw)
    assert not marker.exists()


def test_truncated_and_empty_files_name_the_file(tmp_path: Path) -> None:
    primal_path, _, _, _ = _official_files(tmp_path, "drn_tiny", 4)
    data = primal_path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"trunc\.pt"):
        load_official(tmp_path / "trunc.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt: file is empty"):
        load_official(tmp_path / "empty.pt")
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        load_official(tmp_path / "nope.pt")
