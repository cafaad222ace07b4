"""`drn-sr`: upscale, export, convert and inspect DRN weights; expected failures print one `error:` line, not a trace."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from rich.console import Console
from rich.progress import Progress

from drn_lightning import __version__
from drn_lightning.checks import integer
from drn_lightning.data.io import MAX_IMAGE_PIXELS, ImageReadError, list_images, read_image
from drn_lightning.export import export_model
from drn_lightning.files import atomic_write
from drn_lightning.inference import DEFAULT_TILE_OVERLAP, DEFAULT_TILE_PASSES, PRECISIONS, load_upscaler
from drn_lightning.models.drn import SUPPORTED_SCALES
from drn_lightning.models.official import describe, load_weights, official_to_checkpoint, save_official

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK = 0
EXIT_FAILED = 1  # something could not be done (a file, the weights, the output folder)
EXIT_USAGE = 2  # the command line itself is wrong (argparse uses 2 as well)
OUTPUT_FORMATS = {"png": ".png", "jpg": ".jpg", "webp": ".webp"}
_MAX_PIXELS_HINT = "; raise the limit with --max-pixels N if the file is trusted"


class CliError(Exception):
    """An expected failure: printed as one `error:` line, exit code attached."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _console(stderr: bool = False) -> Any:
    """Rich console: status text goes to stdout, the progress bar to stderr (so stderr holds only errors when redirected)."""
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
            return integer(int(text), "value", minimum)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _collect_inputs(inputs: Sequence[str]) -> list[Path]:
    """Expand folders to their image files (sorted, non-recursive); a missing path fails the whole run early."""
    files: list[Path] = []
    for path in map(Path, inputs):
        if not path.exists():
            raise CliError(f"{path}: input does not exist")
        try:
            files.extend(list_images(path) if path.is_dir() else [path])
        except ValueError as err:  # a folder without images
            raise CliError(str(err)) from None
    return files


def _prepare_output_dir(out: Path) -> None:
    """Create the output folder and prove it is writable before any model work is spent."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".drn-sr-probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise CliError(f"{out}: output path exists and is not a folder (-o)") from None
    except OSError as err:
        raise CliError(f"{out}: cannot write to output folder (-o): {err.strerror or err}") from None


def _output_names(files: Sequence[Path], scale: int, suffix: str) -> list[str]:
    """`{stem}_x{scale}{suffix}`; inputs sharing a stem (a.png, a.jpg) keep their extension to stay distinct."""
    stems = Counter(path.stem for path in files)
    names, seen = [], set()
    for path in files:
        base = path.stem if stems[path.stem] == 1 else f"{path.stem}-{path.suffix.lstrip('.').lower()}"
        name, k = f"{base}_x{scale}{suffix}", 1
        while name in seen:  # the same file given twice
            k += 1
            name = f"{base}-{k}_x{scale}{suffix}"
        seen.add(name)
        names.append(name)
    return names


def _save_image(array: Any, path: Path, fmt: str) -> None:
    """Write atomically, so an interrupted run leaves no half image."""
    options: dict[str, dict[str, Any]] = {"jpg": {"quality": 95}, "webp": {"lossless": True}}
    image = Image.fromarray(array)
    pil_format = {"jpg": "JPEG"}.get(fmt, fmt.upper())
    atomic_write(path, lambda handle: image.save(handle, format=pil_format, **options.get(fmt, {})))


def _memory_hint(err: BaseException, tile: int | None) -> str:
    """For an out-of-memory error (torch CPU/CUDA allocators, NumPy): the option that lowers the peak."""
    text = str(err).lower()
    if not (isinstance(err, MemoryError) or "out of memory" in text or "not enough memory" in text):
        return ""
    if tile is None:
        return " (try --tile 256)"
    return f" (try a smaller tile: --tile {tile // 2})" if tile > 1 else ""


def _file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode): the same file whatever the spelling (links, `..`, case-insensitive names); None if absent."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _plan_outputs(files: Sequence[Path], args: argparse.Namespace, scale: int) -> list[tuple[Path, Path]]:
    """(input, output) pairs to run: an output that is an input is refused, existing ones skipped unless --overwrite."""
    outputs = [Path(args.output) / name for name in _output_names(files, scale, OUTPUT_FORMATS[args.format])]
    inputs = {_file_id(path): path for path in files}
    for output in outputs:
        source = inputs.get(_file_id(output)) if output.exists() else None
        if source is not None:  # it would be overwritten and then upscaled again (`cat.png`, `cat_x4.png`)
            which = "this input" if source == output else f"the input {source}"
            raise CliError(
                f"{output}: output would overwrite {which}; choose an output folder (-o) without inputs", EXIT_USAGE
            )
    todo = []
    for path, output in zip(files, outputs):
        if output.exists() and not args.overwrite:
            _console().print(f"skipped {path}: {output} exists (--overwrite replaces it)")
        else:
            todo.append((path, output))
    return todo


def _upscale_all(upscaler: Any, todo: Sequence[tuple[Path, Path]], args: argparse.Namespace) -> list[str]:
    """Upscale each file into its output, behind a progress bar; a file that fails is listed, the rest go on."""
    failures: list[tuple[Path, str]] = []
    bar_console = _console(stderr=True)
    with Progress(console=bar_console, transient=True, disable=not bar_console.is_terminal) as progress:
        task = progress.add_task("upscaling", total=len(todo))
        for path, output in todo:
            progress.update(task, description=f"upscaling {path.name}")
            try:
                _save_image(upscaler(read_image(path, max_pixels=args.max_pixels)), output, args.format)
            except (ImageReadError, OSError) as err:
                message = _one_line(err)
                if "decompression bomb" in message:  # point at the CLI option rather than the Python API
                    message = message.split("; raise it with")[0] + _MAX_PIXELS_HINT
                failures.append((path, message))
            except (RuntimeError, MemoryError) as err:  # out of memory and similar, per image
                failures.append((path, f"{type(err).__name__}: {_one_line(err)}{_memory_hint(err, args.tile)}"))
            progress.advance(task)
    return [m if str(p) in m else f"{p}: {m}" for p, m in failures]


def _cmd_upscale(args: argparse.Namespace) -> int:
    files = _collect_inputs(args.inputs)
    out_dir = Path(args.output)
    _prepare_output_dir(out_dir)
    if args.dual_weights is not None:  # not needed to upscale, but a mismatched pair is worth an early error
        load_weights(args.weights, args.dual_weights, scale=args.scale)
    settings = ("device", "precision", "scale", "tile", "tile_overlap", "tile_passes", "self_ensemble")
    upscaler = load_upscaler(args.weights, **{key: getattr(args, key) for key in settings})
    console = _console()
    console.print(
        f"{upscaler.info['variant']} x{upscaler.scale} from {args.weights} on {upscaler.device} ({upscaler.precision})"
        + (f", tile {args.tile}+{args.tile_overlap}" if args.tile else "")
        + (", self-ensemble" if args.self_ensemble else "")
    )
    todo = _plan_outputs(files, args, upscaler.scale)
    failures = _upscale_all(upscaler, todo, args)
    done = len(todo) - len(failures)
    if not failures:
        kept = f", skipped {len(files) - len(todo)} existing" if len(todo) < len(files) else ""
        console.print(f"wrote {done} image{'s' if done != 1 else ''} to {out_dir}{kept}")
        return EXIT_OK
    if len(todo) == 1:
        raise CliError(failures[0])
    lines = [f"error: {len(failures)} of {len(todo)} images failed (wrote {done} to {out_dir}):"]
    sys.stderr.write("\n".join(lines + [f"  {message}" for message in failures]) + "\n")
    return EXIT_FAILED


def _cmd_export(args: argparse.Namespace) -> int:
    primal, _, info = load_weights(args.weights, scale=args.scale)
    report = export_model(primal, args.output, args.format, opset=args.opset)
    what = f"{args.format}" + (f" opset {args.opset}" if args.format == "onnx" else "")
    print(
        f"wrote {report.path} ({what}, {describe(info)}; input lr (N, 3, H, W) float 0-255, output sr x{info['scale']})"
    )
    if report.verified:
        sizes = ", ".join(f"{n}x3x{h}x{w}" for n, h, w in report.max_abs_diff)
        print(f"verified against eager PyTorch at {sizes}: max |diff| = {report.worst:.2e} (0-1 scale)")
    else:
        print("not verified: onnxruntime is not installed (pip install 'drn-lightning[onnx]')")
    return EXIT_OK


def _cmd_convert(args: argparse.Namespace) -> int:
    primal, duals, info = load_weights(args.input, args.dual)
    print(
        f"found {describe(info)} in {args.input}" + (f" with {len(duals)} dual models" if duals else ", no dual models")
    )
    out = Path(args.output)
    if out.suffix == ".ckpt" and args.dual_out is not None:
        raise CliError("--dual-out only applies when writing the authors' format (OUT not ending in .ckpt)", EXIT_USAGE)
    try:
        if out.suffix == ".ckpt":
            official_to_checkpoint(primal, duals, info, out)
            print(f"wrote {out} (Lightning checkpoint)")
            return EXIT_OK
        dual_out = Path(args.dual_out or out.with_name(f"{out.stem}_dual_model{out.suffix or '.pt'}"))
        save_official(primal, duals, out, dual_out if duals is not None else None)
    except OSError as err:
        raise CliError(f"{getattr(err, 'filename', None) or out}: cannot write ({err.strerror or err})") from None
    print(f"wrote {out} (authors' primal)" + (f" and {dual_out} (authors' dual list)" if duals is not None else ""))
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    primal, duals, info = load_weights(args.file, args.dual)
    print(f"file:       {args.file}")
    for key in ("variant", "scale", "n_feats", "n_blocks"):
        print(f"{key + ':':<12}{'x' if key == 'scale' else ''}{info[key]}")
    print(f"parameters: {sum(p.numel() for p in primal.parameters()):,} (primal)")
    if duals is not None:
        print(f"duals:      {len(duals)} models, {sum(p.numel() for p in duals.parameters()):,} parameters")
    return EXIT_OK


def _add_upscale(sub: Any, model_options: argparse.ArgumentParser) -> None:
    up = sub.add_parser(
        "upscale",
        parents=[model_options],
        help="upscale image files and folders",
        description="Upscale images; writes {stem}_x{scale}.{format}.",
    )
    add = up.add_argument
    add("inputs", nargs="+", metavar="INPUT", help="image files (PNG, JPEG, WebP, ...) or folders of them")
    add("-o", "--output", required=True, metavar="OUT", help="output folder (created if missing)")
    add("--dual-weights", metavar="FILE", help="authors' dual .pt; only checked against --weights")
    add("--tile", type=_positive_int, metavar="N", help="process N x N LR tiles to bound memory (default: whole image)")
    add(
        "--tile-overlap",
        type=_non_negative_int,
        default=DEFAULT_TILE_OVERLAP,
        metavar="M",
        help="LR pixels of context around each tile (default: %(default)s)",
    )
    add(
        "--tile-passes",
        type=_positive_int,
        default=DEFAULT_TILE_PASSES,
        metavar="K",
        help="passes sharing channel-attention statistics across tiles; 1 is fastest, 2 (default) matches "
        "whole-image output closely",
    )
    add("--overwrite", action="store_true", help="replace existing outputs (default: skip them with a message)")
    add("--self-ensemble", action="store_true", help="average the 8 flips/transposes (8x slower, slightly higher PSNR)")
    add("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N] (default: auto)")
    add("--precision", default="fp32", choices=PRECISIONS, help="autocast precision; fp16 needs CUDA (default: fp32)")
    add(
        "--format",
        default="png",
        choices=tuple(OUTPUT_FORMATS),
        help="output format (default: png; webp is lossless, jpg quality 95)",
    )
    add(
        "--max-pixels",
        type=_positive_int,
        default=MAX_IMAGE_PIXELS,
        metavar="N",
        help="refuse input images with more pixels, e.g. decompression bombs (default: %(default)s)",
    )
    up.set_defaults(handler=_cmd_upscale)


def build_parser() -> argparse.ArgumentParser:
    """The `drn-sr` argument parser (exposed so docs and tests can inspect the options)."""
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
    _add_upscale(sub, model_options)
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
        "-o", "--output", required=True, metavar="OUT", help="OUT.ckpt: our checkpoint; any other name: authors' primal"
    )
    cv.add_argument(
        "--dual-out", metavar="FILE", help="authors' dual file (default: <OUT stem>_dual_model.pt next to OUT)"
    )
    cv.set_defaults(handler=_cmd_convert)
    inf = sub.add_parser("info", help="print variant, scale and size of a weights file")
    inf.add_argument("file", metavar="FILE", help="authors' .pt primal or our .ckpt")
    inf.add_argument("--dual", metavar="FILE", help="authors' dual .pt to check and count as well")
    inf.set_defaults(handler=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `drn-sr`; returns the exit code (0 ok, 1 failed, 2 bad command line)."""
    args = build_parser().parse_args(argv)
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
    sys.exit(main())
