"""`drn-sr`: upscale, export, convert and inspect DRN weights; expected failures print one `error:` line, not a trace."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from drn_lightning import __version__
from drn_lightning.data.io import MAX_IMAGE_PIXELS, UPSCALE_EXTENSIONS, ImageReadError, list_images, open_image
from drn_lightning.data.prepare import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_data_commands, at_least, progress
from drn_lightning.data.prepare import DataCommandError as CliError
from drn_lightning.export import export_model
from drn_lightning.files import OutputExistsError, atomic_write, claim_output, file_id
from drn_lightning.inference import DEFAULT_TILE_OVERLAP, DEFAULT_TILE_PASSES, PRECISIONS, load_upscaler
from drn_lightning.models import SUPPORTED_SCALES, describe, load_weights, official_to_checkpoint, save_official
from drn_lightning.options import first_line

OUTPUT_FORMATS = {"png": ".png", "jpg": ".jpg", "webp": ".webp"}
_SAVE_OPTIONS: dict[str, dict[str, Any]] = {"jpg": {"quality": 95}, "webp": {"lossless": True}}
_MAX_PIXELS_HINT = "; raise the limit with --max-pixels N if the file is trusted"


def _collect_inputs(inputs: Sequence[str]) -> list[Path]:
    """Expand folders to their image files (sorted, non-recursive), naming what is left out; missing paths fail early."""
    files: list[Path] = []
    for path in map(Path, inputs):
        if not path.exists():
            raise CliError(f"{path}: input does not exist")
        found = list_images(path, UPSCALE_EXTENSIONS) if path.is_dir() else [path]  # ValueError: no images
        for left in sorted(set(path.iterdir()) - set(found)) if path.is_dir() else []:
            why = "folder, not searched" if left.is_dir() else "hidden" if left.name[0] == "." else "not an image"
            print(f"skipped {left}: {why}")
        files.extend(found)
    return files


def _prepare_output_dir(out: Path) -> None:
    """Create the output folder and prove it is writable before any model work is spent."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
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


def _upscale_one(upscaler: Any, path: Path, output: Path, args: argparse.Namespace) -> list[str]:
    """Read (upright, first frame, mode kept), upscale, write with the input's EXIF and ICC profile; the warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = open_image(path, max_pixels=args.max_pixels)
    notes = [str(w.message) if str(path) in str(w.message) else f"{path}: {w.message}" for w in caught]
    sr = upscaler(image)
    if args.format == "jpg" and sr.mode in ("LA", "RGBA"):
        sr = sr.convert(sr.mode[:-1])
        notes.append(f"{path}: alpha dropped, JPEG has none (--format png or webp keeps it)")
    exif = image.getexif()  # upright now: open_image dropped the orientation tag
    meta = {"exif": exif.tobytes() if exif else None, "icc_profile": image.info.get("icc_profile")}
    options = {**_SAVE_OPTIONS.get(args.format, {}), **{key: value for key, value in meta.items() if value}}
    fmt = {"jpg": "JPEG"}.get(args.format, args.format.upper())
    atomic_write(output, lambda handle: sr.save(handle, format=fmt, **options))  # no half image if interrupted
    return notes


def _memory_hint(err: BaseException, tile: int | None) -> str:
    """For an out-of-memory error (torch CPU/CUDA allocators, NumPy): the option that lowers the peak."""
    text = str(err).lower()
    if tile == 1 or not (isinstance(err, MemoryError) or "out of memory" in text or "not enough memory" in text):
        return ""
    return " (try --tile 256)" if tile is None else f" (try a smaller tile: --tile {tile // 2})"


def _plan_outputs(files: Sequence[Path], args: argparse.Namespace, scale: int) -> list[tuple[Path, Path]]:
    """(input, output) pairs to run: an output that is an input is refused, existing ones skipped unless --overwrite."""
    outputs = [Path(args.output) / name for name in _output_names(files, scale, OUTPUT_FORMATS[args.format])]
    ids = {file_id(path) for path in files}
    for output in outputs:  # an input would be overwritten, then upscaled again (`cat.png`, `cat_x4.png`)
        if file_id(output) in ids:
            inputs = [("INPUT" if path == output else f"INPUT {path}", path) for path in files]
            claim_output(output, inputs=inputs, overwrite=True, instead="an output folder (-o) without inputs")
    todo = []
    for path, output in zip(files, outputs):
        if output.exists() and not args.overwrite:
            print(f"skipped {path}: {output} exists (--overwrite replaces it)")
        else:
            todo.append((path, output))
    return todo


def _upscale_all(upscaler: Any, todo: Sequence[tuple[Path, Path]], args: argparse.Namespace) -> list[str]:
    """Upscale each file into its output, behind a progress bar; a file that fails is listed, the rest go on."""
    failures: list[tuple[Path, str]] = []
    with progress("upscaling", len(todo), "images") as advance:  # a bar on a terminal, else a line every 10 s
        for path, output in todo:
            try:
                for note in _upscale_one(upscaler, path, output, args):
                    print(f"warning: {note}", file=sys.stderr)
            except (ImageReadError, OSError) as err:
                bomb = isinstance(err.__cause__, Image.DecompressionBombError | Image.DecompressionBombWarning)
                failures.append((path, first_line(err) + (_MAX_PIXELS_HINT if bomb else "")))
            except (RuntimeError, MemoryError) as err:  # out of memory and similar, per image
                failures.append((path, f"{type(err).__name__}: {first_line(err)}{_memory_hint(err, args.tile)}"))
            advance(1)
    return [m if str(p) in m else f"{p}: {m}" for p, m in failures]


def _cmd_upscale(args: argparse.Namespace) -> int:
    files = _collect_inputs(args.inputs)
    out_dir = Path(args.output)
    _prepare_output_dir(out_dir)
    if args.dual_weights is not None:  # not needed to upscale, but a mismatched pair is worth an early error
        load_weights(args.weights, args.dual_weights, scale=args.scale, allow_unverified=args.allow_unverified)
    keys = ("device", "precision", "scale", "tile", "tile_overlap", "tile_passes", "self_ensemble", "allow_unverified")
    upscaler = load_upscaler(args.weights, **{key: vars(args)[key] for key in keys})
    print(
        f"{upscaler.info['variant']} x{upscaler.scale} from {args.weights} on {upscaler.device} ({upscaler.precision})"
        + (f", tile {args.tile}+{args.tile_overlap}" if args.tile else "")
        + (", self-ensemble" if args.self_ensemble else "")
    )
    todo = _plan_outputs(files, args, upscaler.scale)
    failures = _upscale_all(upscaler, todo, args)
    done = len(todo) - len(failures)
    if not failures:
        kept = f", skipped {len(files) - len(todo)} existing" if len(todo) < len(files) else ""
        print(f"wrote {done} image{'s' if done != 1 else ''} to {out_dir}{kept}")
        return EXIT_OK
    if len(todo) == 1:
        raise CliError(failures[0])
    lines = [f"error: {len(failures)} of {len(todo)} images failed (wrote {done} to {out_dir}):"]
    sys.stderr.write("\n".join(lines + [f"  {message}" for message in failures]) + "\n")
    return EXIT_FAILED


def _cmd_export(args: argparse.Namespace) -> int:
    claim_output(args.output, inputs=[("--weights", args.weights)], overwrite=args.overwrite)
    primal, _, info = load_weights(args.weights, scale=args.scale, allow_unverified=args.allow_unverified)
    report = export_model(primal, args.output, args.format, opset=args.opset)
    what = args.format + (f" opset {args.opset}" if args.format == "onnx" else "") + f", {describe(info)}"
    print(f"wrote {report.path} ({what}; input lr (N, 3, H, W) float 0-255, output sr x{info['scale']})")
    if report.verified:
        sizes = ", ".join(f"{n}x3x{h}x{w}" for n, h, w in report.max_abs_diff)
        print(f"verified against eager PyTorch at {sizes}: max |diff| = {report.worst:.2e} (0-1 scale)")
    else:
        print("not verified: onnxruntime is not installed (pip install 'drn-lightning[onnx]')")
    return EXIT_OK


def _cmd_convert(args: argparse.Namespace) -> int:
    out, inputs = Path(args.output), [("IN", args.input), ("--dual", args.dual)]
    if out.suffix == ".ckpt" and args.dual_out is not None:
        raise CliError("--dual-out only applies when writing the authors' format (OUT not ending in .ckpt)", EXIT_USAGE)
    claim_output(out, inputs=inputs, overwrite=args.overwrite)
    primal, duals, info = load_weights(args.input, args.dual, allow_unverified=args.allow_unverified)
    found = f" with {len(duals)} dual models" if duals else ", no dual models"
    print(f"found {describe(info)} in {args.input}{found}")
    dual_out = Path(args.dual_out or out.with_name(f"{out.stem}_dual_model{out.suffix or '.pt'}"))
    if duals is not None and out.suffix != ".ckpt":  # both files claimed before either is written
        claim_output(dual_out, inputs=[*inputs, ("-o", out)], overwrite=args.overwrite, option="--dual-out")
    try:
        if out.suffix == ".ckpt":
            official_to_checkpoint(primal, duals, info, out)
            print(f"wrote {out} (Lightning checkpoint)")
            return EXIT_OK
        save_official(primal, duals, out, dual_out if duals is not None else None)
    except OSError as err:
        raise CliError(f"{getattr(err, 'filename', None) or out}: cannot write ({err.strerror or err})") from None
    print(f"wrote {out} (authors' primal)" + (f" and {dual_out} (authors' dual list)" if duals is not None else ""))
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    primal, duals, info = load_weights(args.file, args.dual, allow_unverified=args.allow_unverified)
    print(f"file:       {args.file}")
    for key in ("variant", "scale", "n_feats", "n_blocks"):
        print(f"{key + ':':<12}{'x' if key == 'scale' else ''}{info[key]}")
    print(f"parameters: {sum(p.numel() for p in primal.parameters()):,} (primal)")
    if duals is not None:
        print(f"duals:      {len(duals)} models, {sum(p.numel() for p in duals.parameters()):,} parameters")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The `drn-sr` argument parser (exposed so docs and tests can inspect the options)."""
    parser = argparse.ArgumentParser(prog="drn-sr", description="Upscale images with DRN (Dual Regression Networks).")
    parser.add_argument("--version", action="version", version=f"drn-sr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{upscale,export,convert,info,data}")
    unverified = argparse.ArgumentParser(add_help=False)
    unverified.add_argument("--allow-unverified", action="store_true", help="load our file without its SHA-256 digest")
    model = argparse.ArgumentParser(add_help=False, parents=[unverified])  # options of the model commands, once
    add = model.add_argument
    add("--weights", required=True, metavar="FILE", help="authors' .pt primal or our .ckpt")
    add("--scale", type=int, choices=SUPPORTED_SCALES, help="fail unless the weights upscale by this factor")
    up = sub.add_parser(
        "upscale", parents=[model], help="upscale images and folders", description="Writes {stem}_x{scale}.{format}."
    )
    up.set_defaults(handler=_cmd_upscale)
    add, positive = up.add_argument, at_least(1)
    add("inputs", nargs="+", metavar="INPUT", help="image files (PNG, JPEG, WebP, ...) or folders of them")
    add("-o", "--output", required=True, metavar="OUT", help="output folder (created if missing)")
    add("--dual-weights", metavar="FILE", help="authors' dual .pt; only checked against --weights")
    add("--tile", type=positive, metavar="N", help="process N x N LR tiles to bound memory (default: whole image)")
    add(
        "--tile-overlap",
        type=at_least(0),
        default=DEFAULT_TILE_OVERLAP,
        metavar="M",
        help="LR pixels of context around each tile (default: %(default)s)",
    )
    add(
        "--tile-passes",
        type=positive,
        default=DEFAULT_TILE_PASSES,
        metavar="K",
        help="channel-attention passes over the tiles; 1 is fastest, 2 matches whole images (default: %(default)s)",
    )
    add("--overwrite", action="store_true", help="replace existing outputs (default: skip them with a message)")
    add("--self-ensemble", action="store_true", help="average the 8 flips/transposes (8x slower, slightly higher PSNR)")
    add("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N] (default: auto)")
    add("--precision", default="fp32", choices=PRECISIONS, help="autocast precision; fp16 needs CUDA (default: fp32)")
    add("--format", default="png", choices=OUTPUT_FORMATS, help="webp is lossless, jpg quality 95 (default: png)")
    add(
        "--max-pixels",
        type=positive,
        default=MAX_IMAGE_PIXELS,
        metavar="N",
        help="refuse input images with more pixels, e.g. decompression bombs (default: %(default)s)",
    )
    ex = sub.add_parser("export", parents=[model], help="export the primal network to ONNX or TorchScript")
    ex.set_defaults(handler=_cmd_export)
    add = ex.add_argument
    add("--format", required=True, choices=("onnx", "torchscript"))
    add("-o", "--output", required=True, metavar="OUT", help="output file")
    add("--opset", type=int, default=17, help="ONNX opset; >= 18 uses the torch.export-based exporter (default: 17)")
    add("--overwrite", action="store_true", help="replace OUT if it exists (never --weights)")
    cv = sub.add_parser("convert", parents=[unverified], help="authors' .pt pair <-> our .ckpt")
    cv.set_defaults(handler=_cmd_convert)
    add = cv.add_argument
    add("input", metavar="IN", help="authors' primal .pt, or our .ckpt")
    add("--dual", metavar="IN_DUAL", help="authors' dual .pt (when IN is the authors' primal)")
    add("-o", "--output", required=True, metavar="OUT", help="OUT.ckpt: our checkpoint, else the authors' primal")
    add("--dual-out", metavar="FILE", help="authors' dual file (default: <OUT stem>_dual_model.pt next to OUT)")
    add("--overwrite", action="store_true", help="replace OUT and --dual-out if they exist (never IN)")
    inf = sub.add_parser("info", parents=[unverified], help="print variant, scale and size of a weights file")
    inf.set_defaults(handler=_cmd_info)
    inf.add_argument("file", metavar="FILE", help="authors' .pt primal or our .ckpt")
    inf.add_argument("--dual", metavar="FILE", help="authors' dual .pt to check and count as well")
    add_data_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `drn-sr`; returns the exit code (0 ok, 1 failed, 2 bad command line)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (CliError, OutputExistsError) as err:
        sys.stderr.write(f"error: {err}\n")
        return getattr(err, "code", EXIT_USAGE)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except Exception as err:
        if os.environ.get("DRN_SR_DEBUG"):
            raise
        if isinstance(err, (ValueError, OSError, RuntimeError, ImportError, MemoryError)):  # these name the file
            sys.stderr.write(f"error: {first_line(err)}\n")
        else:
            sys.stderr.write(f"error: {type(err).__name__}: {first_line(err)} (set DRN_SR_DEBUG=1 for a traceback)\n")
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
