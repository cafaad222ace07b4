"""`drn-sr upscale`: the image-file side of the command (inputs, output names and collisions, writing, failures).

Kept apart from `drn_lightning.cli` (parser, other commands, entry point), which imports it when it builds the parser.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from drn_lightning.cli import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    OUTPUT_FORMATS,
    CliError,
    _console,
    _non_negative_int,
    _one_line,
    _positive_int,
)
from drn_lightning.data.io import MAX_IMAGE_PIXELS

__all__ = ["add_upscale"]


def _collect_inputs(inputs: Sequence[str]) -> list[Path]:
    """Expand folders to their image files (sorted, non-recursive); a missing path fails the whole run early."""
    from drn_lightning.data.io import list_images

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
    stems: dict[str, int] = {}
    for path in files:
        stems[path.stem] = stems.get(path.stem, 0) + 1
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
    from PIL import Image

    from drn_lightning.files import atomic_write

    all_options: dict[str, dict[str, Any]] = {"jpg": {"quality": 95}, "webp": {"lossless": True}}
    options = all_options.get(fmt, {})
    pil_format = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[fmt]
    image = Image.fromarray(array)
    atomic_write(path, lambda handle: image.save(handle, format=pil_format, **options))


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
    """(input, output) pairs to run. An output that is also an input would be overwritten and then upscaled again
    (`-o` = the input folder, holding `cat.png` and `cat_x4.png`): refused before anything is written. Existing
    outputs are skipped with a message unless --overwrite."""
    outputs = [Path(args.output) / name for name in _output_names(files, scale, OUTPUT_FORMATS[args.format])]
    inputs = {_file_id(path): path for path in files}
    for output in outputs:
        source = inputs.get(_file_id(output)) if output.exists() else None
        if source is not None:
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


def _upscale_all(
    upscaler: Any, files: Sequence[Path], outputs: Sequence[Path], args: argparse.Namespace
) -> list[tuple[Path, str]]:
    """Upscale each file into its output, behind a progress bar; a file that fails is listed, the rest go on."""
    from rich.progress import Progress

    from drn_lightning.data.io import ImageReadError, read_image

    failures: list[tuple[Path, str]] = []
    bar_console = _console(stderr=True)
    with Progress(console=bar_console, transient=True, disable=not bar_console.is_terminal) as progress:
        task = progress.add_task("upscaling", total=len(files))
        for path, output in zip(files, outputs):
            progress.update(task, description=f"upscaling {path.name}")
            try:
                _save_image(upscaler(read_image(path, max_pixels=args.max_pixels)), output, args.format)
            except (ImageReadError, OSError) as err:
                message = _one_line(err)
                if "decompression bomb" in message:  # point at the CLI option rather than the Python API
                    message = (
                        message.split("; raise it with")[0]
                        + "; raise the limit with --max-pixels N if the file is trusted"
                    )
                failures.append((path, message))
            except (RuntimeError, MemoryError) as err:  # out of memory and similar, per image
                failures.append((path, f"{type(err).__name__}: {_one_line(err)}{_memory_hint(err, args.tile)}"))
            progress.advance(task)
    return [(p, m if str(p) in m else f"{p}: {m}") for p, m in failures]


def _cmd_upscale(args: argparse.Namespace) -> int:
    files = _collect_inputs(args.inputs)
    out_dir = Path(args.output)
    _prepare_output_dir(out_dir)

    from drn_lightning.inference import load_upscaler
    from drn_lightning.models.official import load_weights

    if args.dual_weights is not None:  # not needed to upscale, but a mismatched pair is worth an early error
        load_weights(args.weights, args.dual_weights, scale=args.scale)
    settings = ("device", "precision", "scale", "tile", "tile_overlap", "tile_passes", "self_ensemble")
    upscaler = load_upscaler(args.weights, **{key: getattr(args, key) for key in settings})
    info = upscaler.info
    console = _console()
    console.print(
        f"{info['variant']} x{info['scale']} from {args.weights} on {upscaler.device} ({upscaler.precision})"
        + (f", tile {args.tile}+{args.tile_overlap}" if args.tile else "")
        + (", self-ensemble" if args.self_ensemble else "")
    )
    todo = _plan_outputs(files, args, upscaler.scale)
    failures = _upscale_all(upscaler, [p for p, _ in todo], [o for _, o in todo], args)
    done = len(todo) - len(failures)
    if not failures:
        kept = f", skipped {len(files) - len(todo)} existing" if len(todo) < len(files) else ""
        console.print(f"wrote {done} image{'s' if done != 1 else ''} to {out_dir}{kept}")
        return EXIT_OK
    if len(todo) == 1:
        raise CliError(failures[0][1])
    lines = [f"error: {len(failures)} of {len(todo)} images failed (wrote {done} to {out_dir}):"]
    lines += [f"  {message}" for _, message in failures]
    sys.stderr.write("\n".join(lines) + "\n")
    return EXIT_FAILED


def add_upscale(sub: Any, model_options: argparse.ArgumentParser) -> None:
    from drn_lightning.ops.tiling import DEFAULT_TILE_OVERLAP

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
        default=2,
        metavar="K",
        help="passes sharing channel-attention statistics across tiles; 1 is fastest, 2 (default) matches "
        "whole-image output closely",
    )
    add("--overwrite", action="store_true", help="replace existing outputs (default: skip them with a message)")
    add("--self-ensemble", action="store_true", help="average the 8 flips/transposes (8x slower, slightly higher PSNR)")
    add("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N] (default: auto)")
    add(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16", "fp16"),
        help="autocast precision; fp16 needs CUDA (default: fp32)",
    )
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
