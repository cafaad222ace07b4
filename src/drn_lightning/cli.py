"""`drn-sr`: upscale images, export, convert and inspect DRN weights from the command line.

Every expected failure (missing file, unreadable image, bad weights, unwritable folder, bad option)
ends with one `error: ...` line on stderr naming the file or option and a non-zero exit, never a
traceback; set DRN_SR_DEBUG=1 to get the traceback of an unexpected error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK = 0
EXIT_FAILED = 1  # something could not be done (a file, the weights, the output folder)
EXIT_USAGE = 2  # the command line itself is wrong (argparse uses 2 as well)
OUTPUT_FORMATS = {"png": ".png", "jpg": ".jpg", "webp": ".webp"}


class CliError(Exception):
    """An expected failure: printed as one `error:` line, exit code attached."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _console(stderr: bool = False) -> Any:
    """Rich console: status text goes to stdout, the progress bar to stderr (so stderr holds only errors when redirected)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _one_line(err: BaseException) -> str:
    """First line of an exception message (our errors already name the file), without a traceback."""
    text = str(err).strip()
    if isinstance(err, KeyError) or not text:
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text.splitlines()[0]


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse `type` for integers >= `minimum`, whose error says what was expected."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


# --- export / convert / info ----------------------------------------------------------------------


def _cmd_export(args: argparse.Namespace) -> int:
    from drn_lightning.export import export_model
    from drn_lightning.models.official import describe, load_weights

    primal, _, info = load_weights(args.weights, scale=args.scale)
    out = Path(args.output)
    if not out.parent.is_dir():
        raise CliError(f"{out}: output folder {out.parent} does not exist (-o)")
    report = export_model(primal, out, args.format, opset=args.opset)
    what = f"{args.format}" + (f" opset {args.opset}" if args.format == "onnx" else "")
    print(f"wrote {out} ({what}, {describe(info)}; input lr (N, 3, H, W) float 0-255, output sr x{info['scale']})")
    if report.verified:
        sizes = ", ".join(f"{n}x3x{h}x{w}" for n, h, w in report.max_abs_diff)
        print(f"verified against eager PyTorch at {sizes}: max |diff| = {report.worst:.2e} (0-1 scale)")
    else:
        print("not verified: onnxruntime is not installed (pip install 'drn-lightning[onnx]')")
    return EXIT_OK


def _cmd_convert(args: argparse.Namespace) -> int:
    from drn_lightning.models.official import describe, load_weights, official_to_checkpoint, save_official

    primal, duals, info = load_weights(args.input, args.dual)
    n_duals = len(duals) if duals is not None else 0
    print(
        f"found {describe(info)} in {args.input}" + (f" with {n_duals} dual models" if n_duals else ", no dual models")
    )
    out = Path(args.output)
    try:
        if out.suffix == ".ckpt":
            if args.dual_out is not None:
                raise CliError(
                    "--dual-out only applies when writing the authors' format (OUT not ending in .ckpt)", EXIT_USAGE
                )
            official_to_checkpoint(primal, duals, info, out)
            print(f"wrote {out} (Lightning checkpoint)")
            return EXIT_OK
        dual_out = (
            Path(args.dual_out) if args.dual_out else out.with_name(f"{out.stem}_dual_model{out.suffix or '.pt'}")
        )
        save_official(primal, duals, out, dual_out if duals is not None else None)
    except OSError as err:
        raise CliError(f"{getattr(err, 'filename', None) or out}: cannot write ({err.strerror or err})") from None
    print(f"wrote {out} (authors' primal)" + (f" and {dual_out} (authors' dual list)" if duals is not None else ""))
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    from drn_lightning.models.official import load_weights

    primal, duals, info = load_weights(args.file, args.dual)
    n_primal = sum(p.numel() for p in primal.parameters())
    print(f"file:       {args.file}")
    print(f"variant:    {info['variant']}")
    print(f"scale:      x{info['scale']}")
    print(f"n_feats:    {info['n_feats']}")
    print(f"n_blocks:   {info['n_blocks']}")
    print(f"parameters: {n_primal:,} (primal)")
    if duals is not None:
        n_dual = sum(p.numel() for p in duals.parameters())
        print(f"duals:      {len(duals)} models, {n_dual:,} parameters")
    return EXIT_OK


# --- parser and entry point -----------------------------------------------------------------------


def _add_file_commands(sub: Any, model_options: argparse.ArgumentParser) -> None:
    ex = sub.add_parser("export", parents=[model_options], help="export the primal network to ONNX or TorchScript")
    ex.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    ex.add_argument("-o", "--output", required=True, metavar="OUT", help="output file")
    ex.add_argument(
        "--opset", type=int, default=17, help="ONNX opset; >= 18 uses the torch.export-based exporter (default: 17)"
    )
    ex.set_defaults(handler=_cmd_export)
    cv = sub.add_parser("convert", help="authors' .pt pair <-> our .ckpt")
    cv.add_argument("input", metavar="IN", help="authors' primal .pt, or our .ckpt")
    cv.add_argument("--dual", metavar="IN_DUAL", help="authors' dual .pt (when IN is the authors' primal)")
    cv.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="OUT.ckpt writes our checkpoint; any other name writes the authors' primal",
    )
    cv.add_argument(
        "--dual-out", metavar="FILE", help="authors' dual file (default: <OUT stem>_dual_model.pt next to OUT)"
    )
    cv.set_defaults(handler=_cmd_convert)
    inf = sub.add_parser("info", help="print variant, scale and size of a weights file")
    inf.add_argument("file", metavar="FILE", help="authors' .pt primal or our .ckpt")
    inf.add_argument("--dual", metavar="FILE", help="authors' dual .pt to check and count as well")
    inf.set_defaults(handler=_cmd_info)


def build_parser() -> argparse.ArgumentParser:
    """The `drn-sr` argument parser (exposed so docs and tests can inspect the options)."""
    from drn_lightning import __version__
    from drn_lightning.models.drn import SUPPORTED_SCALES

    parser = argparse.ArgumentParser(
        prog="drn-sr", description="Super-resolve images with DRN (Dual Regression Networks, CVPR 2020)."
    )
    parser.add_argument("--version", action="version", version=f"drn-sr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{upscale,export,convert,info}")
    # Options shared by the commands that run a model (argparse parents keep one definition of each).
    model_options = argparse.ArgumentParser(add_help=False)
    model_options.add_argument("--weights", required=True, metavar="FILE", help="authors' .pt primal or our .ckpt")
    model_options.add_argument(
        "--scale", type=int, choices=SUPPORTED_SCALES, help="fail unless the weights upscale by this factor"
    )
    from drn_lightning.cli_upscale import add_upscale  # imports this module: not at the top

    add_upscale(sub, model_options)
    _add_file_commands(sub, model_options)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `drn-sr`; returns the exit code (0 ok, 1 failed, 2 bad command line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except CliError as err:
        sys.stderr.write(f"error: {err}\n")
        return err.code
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except Exception as err:
        if os.environ.get("DRN_SR_DEBUG"):
            raise
        if isinstance(err, (ValueError, OSError, RuntimeError, ImportError, MemoryError)):
            # Our loaders and options raise with the file or option named; that line says it all.
            sys.stderr.write(f"error: {_one_line(err)}\n")
        else:
            sys.stderr.write(f"error: {type(err).__name__}: {_one_line(err)} (set DRN_SR_DEBUG=1 for a traceback)\n")
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    from drn_lightning.cli import main as package_main  # the package's module, whose CliError cli_upscale raises

    sys.exit(package_main())
