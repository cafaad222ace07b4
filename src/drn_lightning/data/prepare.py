"""`drn-sr data`: fetch, link, degrade and check SR data folders; every step resumable and safe to run twice."""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import http.client
import os
import posixpath
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import partial
from operator import methodcaller
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
from PIL import Image

from drn_lightning.data.io import IMAGE_EXTENSIONS, ImageReadError, list_images, read_image, read_image_size
from drn_lightning.files import atomic_write, write_json
from drn_lightning.options import first_line

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2  # failed: network, digest, disk; usage: bad arguments or invalid data
CHUNK = 1 << 20  # download and hashing block size
TIMEOUT_S = 60.0  # per socket operation
RETRIES = 3  # a transfer dropped midway is resumed this many times before giving up
LOG_EVERY_S = 10.0  # plain progress lines when stdout is not a terminal
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


class DataCommandError(Exception):
    """An expected failure: the CLI prints it as one `error:` line and exits with `code`."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class Archive(NamedTuple):
    """A published archive: URL, pinned "sha256:..." (or "md5:..." if only that is published), size, folder it fills."""

    url: str
    digest: str
    size: int | None = None
    into: str = ""


# DIV2K sizes and SHA-256 as TensorFlow Datasets publishes them (datasets/div2k/checksums.tsv); they unpack into DIV2K/.
_DIV2K = {
    "DIV2K_train_HR.zip": (3530603713, "9d0b9c463f6e35b6c62cc6a930ee2224f670b34c1df841a57670f9acf0f6c335"),
    "DIV2K_valid_HR.zip": (448993893, "20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc"),
    "DIV2K_train_LR_bicubic_X2.zip": (925390592, "a53a424317575838dadce4bcd97cf7b744d6855f43740ed5f0245af3cf4bd850"),
    "DIV2K_valid_LR_bicubic_X2.zip": (117763600, "60eed9875c697df51204aa579e2a699e1d5215095788a097ff54dd17e2664d57"),
    "DIV2K_train_LR_bicubic_X3.zip": (427847282, "ad5c8e5507e2765823d3c2c5bd0934842efcd487c5370604c224090898b3163a"),
    "DIV2K_valid_LR_bicubic_X3.zip": (54513392, "04b9a2ed3b4a0715d3924d3ae8514830c3328fac8d30512ce716d6f419e052a3"),
    "DIV2K_train_LR_bicubic_X4.zip": (246914039, "f006b837f4eb52b82909aa01478e6d6d199eefce932179491d0c9dbb706dde3a"),
    "DIV2K_valid_LR_bicubic_X4.zip": (31505881, "a50a5d1c4b88de4e8d300d8fb2b904c52fe93b2b298a4899697760d7cbb6d553"),
}
# EDSR's Flickr2K.tar and benchmark.tar have no published SHA-256 or size: the MD5s are torchSR's (Coloquinte/torchSR).
# Manga109 has no freely redistributable archive (manga109.org grants it on request), so it is not fetched.
ARCHIVES: dict[str, list[Archive]] = {
    "div2k": [
        Archive(f"https://data.vision.ee.ethz.ch/cvl/DIV2K/{name}", f"sha256:{sha}", size, "DIV2K")
        for name, (size, sha) in _DIV2K.items()
    ],
    "flickr2k": [Archive("https://cv.snu.ac.kr/research/EDSR/Flickr2K.tar", "md5:5d3f39443d5e9489bff8963f8f26cb03")],
    "benchmarks": [Archive("https://cv.snu.ac.kr/research/EDSR/benchmark.tar", "md5:4ace41d33c2384b97e6b320cd0afd6ba")],
}
EXPECTED_COUNTS = {  # images in known sets, for `check`
    "DIV2K_train_HR": 800, "DIV2K_valid_HR": 100, "Flickr2K_HR": 2650, "DF2K_train_HR": 3450,
    "Set5": 5, "Set14": 14, "B100": 100, "Urban100": 100, "Manga109": 109,
}  # fmt: skip


def save_png(image: np.ndarray, handle: IO[bytes]) -> None:
    """The one PNG encoding of generated LR files (the training LR cache uses it too), so their bytes agree."""
    Image.fromarray(image).save(handle, format="PNG", compress_level=1)


@contextlib.contextmanager
def progress(
    what: str, total: int | None, unit: str = "files", done: int = 0, emit: Callable[[str], Any] = print
) -> Iterator[Callable[[int], None]]:
    """`advance(n)`: a rich bar when stdout is a terminal, else `emit` a line every LOG_EVERY_S s (and at the end)."""
    if sys.stdout.isatty():
        from rich import progress as rp

        count = rp.DownloadColumn() if unit == "bytes" else rp.MofNCompleteColumn()
        columns = (rp.TextColumn("{task.description}"), rp.BarColumn(), count, rp.TimeRemainingColumn())
        with rp.Progress(*columns, transient=True) as bar:
            task = bar.add_task(what, total=total, completed=done)
            yield lambda n: bar.advance(task, n)
        return
    div, unit = (1e6, "MB") if unit == "bytes" else (1, unit)
    state, started = [float(done), time.monotonic()], time.monotonic()

    def advance(n: int, final: bool = False) -> None:
        state[0] += n
        now = time.monotonic()
        if (final and now - started >= LOG_EVERY_S) or now - state[1] >= LOG_EVERY_S:  # a quick step stays quiet
            state[1] = time.monotonic()
            emit(f"{what}: {state[0] / div:g}{'' if total is None else f' of {total / div:g}'} {unit}")
            sys.stdout.flush()

    yield advance
    advance(0, final=True)


@contextlib.contextmanager
def _disk_errors(path: Path) -> Iterator[None]:
    """A full disk or quota becomes one error line naming the file being written."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DataCommandError(f"{path}: {exc.strerror or 'no space left'}; free some space and run again") from exc
        raise


def _hash(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, archive: Archive) -> str | None:
    """Why `path` is not the pinned archive (size, then digest), or None when it is."""
    size = path.stat().st_size
    if archive.size is not None and size != archive.size:
        return f"size {size} bytes, expected {archive.size}"
    algorithm, want = archive.digest.split(":")
    got = _hash(path, algorithm)
    return None if got == want else f"{algorithm} {got}, expected {want}"


def _download(url: str, part: Path, size: int | None) -> None:
    """Fetch `url` into `part`, continuing what it holds with an HTTP Range request; a dropped transfer resumes."""
    for attempt in range(RETRIES + 1):
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have >= size:  # complete (or too long): the digest check decides
            return
        try:
            headers = {"Range": f"bytes={have}-"} if have else {}
            response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # nothing past what `part` holds: the digest check decides
                return
            raise DataCommandError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
        except OSError as exc:  # URLError (refused, unknown host) and timeouts
            raise DataCommandError(f"{url}: cannot download ({getattr(exc, 'reason', None) or exc})") from exc
        with response:
            if not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                have = 0  # no Range sent, or the server ignored it and sends the whole file: start over
            left = int(response.headers.get("Content-Length") or -1)
            total = size or (have + left if left >= 0 else None)
            with contextlib.suppress(ConnectionError, TimeoutError, http.client.HTTPException):  # dropped: resume
                with (
                    _disk_errors(part),
                    open(part, "ab" if have else "wb") as handle,
                    progress(part.name[: -len(".part")], total, "bytes", have) as advance,
                ):
                    while chunk := response.read(CHUNK):
                        handle.write(chunk)
                        left -= len(chunk)
                        advance(len(chunk))
                if left <= 0:  # all of Content-Length arrived (or none was announced)
                    return
        if attempt == RETRIES:
            raise DataCommandError(f"{url}: transfer interrupted {RETRIES + 1} times; run again to resume")


def _escapes(name: str) -> bool:
    """Whether an archive path is absolute or climbs out of the folder it is extracted into."""
    norm = posixpath.normpath(name.replace("\\", "/"))
    return norm == ".." or norm.startswith(("/", "../")) or norm[1:2] == ":"


def _extract(archive: Path, into: Path) -> None:
    """Unpack `archive` into `into`, refusing all of it when any member or tar link target would land outside."""
    is_zip = zipfile.is_zipfile(archive)
    try:
        opened: Any = zipfile.ZipFile(archive) if is_zip else tarfile.open(archive)  # noqa: SIM115
    except (tarfile.TarError, OSError) as exc:
        raise DataCommandError(f"{archive}: not a readable zip or tar archive ({exc})") from exc
    with opened:
        members: list[Any] = opened.infolist() if is_zip else opened.getmembers()
        names = [m.filename if is_zip else m.name for m in members]
        for m, name in zip(members, names):
            link = "" if is_zip else m.linkname  # "" unless a tar link
            target = posixpath.join(posixpath.dirname(name), link) if link and m.issym() else link  # hard: from root
            if _escapes(name) or _escapes(target):
                raise DataCommandError(f"{archive}: refused member {name!r}: it would be written outside {into}")
        extra = {"filter": "data"} if not is_zip and hasattr(tarfile, "data_filter") else {}
        with progress(f"extracting {archive.name}", len(members)) as advance:
            for m, name in zip(members, names):
                with _disk_errors(into / name):
                    try:
                        opened.extract(m, into, **extra)
                    except tarfile.TarError as exc:  # tarfile's data filter: links through links, device files
                        raise DataCommandError(f"{archive}: refused member {name!r}: {exc}") from exc
                advance(1)


def fetch(dataset: str, root: Path, mirror: str | None = None) -> None:
    """Download (resuming), verify and unpack each archive of `dataset` under `root`; finished work is skipped."""
    for archive in ARCHIVES[dataset]:
        name = archive.url.rsplit("/", 1)[-1]
        url = f"{mirror.rstrip('/')}/{name}" if mirror else archive.url
        dest, part, bad, into = root / name, root / f"{name}.part", root / f"{name}.bad", root / archive.into
        marker = into / f".{name}.extracted"
        if marker.is_file() and marker.read_text().strip() == archive.digest:
            print(f"{name}: already extracted in {into}")
            continue
        if dest.is_file() and (why := _verify(dest, archive)):
            os.replace(dest, bad)
            print(f"{dest}: {why}; moved to {bad}, downloading again")
        if not dest.is_file():
            root.mkdir(parents=True, exist_ok=True)
            _download(url, part, archive.size)
            if why := _verify(part, archive):
                os.replace(part, bad)
                raise DataCommandError(f"{url}: downloaded file has {why}; kept as {bad}")
            os.replace(part, dest)
        _extract(dest, into)
        atomic_write(marker, methodcaller("write", f"{archive.digest}\n".encode()))
        print(f"{name}: extracted into {into}")


def _list(folder: Path) -> list[Path]:
    """list_images, a missing or empty folder being a usage error."""
    try:
        return list_images(folder)
    except (OSError, ValueError) as exc:
        raise DataCommandError(str(exc), EXIT_USAGE) from exc


def _images(folder: Path, pattern: str = "*") -> list[Path]:
    """Image files matching `pattern` in `folder`, sorted, none hidden; broken links kept so `check` reports them."""
    found = (p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    return sorted(p for p in found if p.is_file() or p.is_symlink())


def build_df2k(root: Path, scales: Sequence[int] = (2, 3, 4)) -> None:
    """DF2K = DIV2K train + Flickr2K, as relative symlinks under root/DF2K (no copies); right links are kept."""
    lr = [(f"DIV2K_train_LR_bicubic/X{s}", f"Flickr2K_LR_bicubic/X{s}", f"DF2K_train_LR_bicubic/X{s}") for s in scales]
    folders = [("DIV2K_train_HR", "Flickr2K_HR", "DF2K_train_HR"), *lr]
    for div2k, flickr, _ in folders:
        if missing := [str(p) for p in (root / "DIV2K" / div2k, root / "Flickr2K" / flickr) if not p.is_dir()]:
            raise DataCommandError(f"DF2K needs {' and '.join(missing)}: fetch div2k and flickr2k first", EXIT_USAGE)
    for div2k, flickr, out in folders:
        folder = root / "DF2K" / out
        folder.mkdir(parents=True, exist_ok=True)
        for source in _list(root / "DIV2K" / div2k) + _list(root / "Flickr2K" / flickr):
            link, target = folder / source.name, os.path.relpath(source, folder)
            if link.is_symlink() and os.readlink(link) == target:
                continue
            if link.exists() and not link.is_symlink():
                raise DataCommandError(f"{link}: exists and is not a link; move it away and run again", EXIT_USAGE)
            link.unlink(missing_ok=True)  # a stale link
            os.symlink(target, link)
        print(f"{folder}: {len(os.listdir(folder))} links")


def _run(fn: Callable[..., Any], jobs: Sequence[tuple[Any, ...]], workers: int, what: str) -> list[Any]:
    """fn(*job) for every job on `workers` processes (1: in this one), with progress; failed images end in one error."""
    results: list[Any] = [None] * len(jobs)
    failures: list[str] = []
    with contextlib.ExitStack() as stack, progress(what, len(jobs)) as advance:
        if workers > 1 and len(jobs) > 1:  # one image per worker, one torch thread each: no pools fighting for cores
            import torch

            pool = ProcessPoolExecutor(min(workers, len(jobs)), initializer=torch.set_num_threads, initargs=(1,))
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)
            futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
            done: Iterator[tuple[int, Callable[[], Any]]] = ((futures[f], f.result) for f in as_completed(futures))
        else:
            done = ((i, partial(fn, *job)) for i, job in enumerate(jobs))
        for i, result in done:
            try:
                results[i] = result()
            except (ImageReadError, OSError, ValueError) as exc:  # DataCommandError (a full disk) stops the run
                failures.append(first_line(exc))
            advance(1)
        if failures:
            raise DataCommandError(f"{what}: {len(failures)} of {len(jobs)} images failed; first: {failures[0]}")
    return results


def _complete(path: Path, size: tuple[int, int]) -> bool:
    """An earlier run's output of the right size (atomic writes leave no partial files)."""
    try:
        return path.is_file() and read_image_size(path) == size
    except (ImageReadError, OSError):
        return False


def _write_lr(source: Path, outputs: dict[int, Path], method: str = "bicubic") -> int:
    """Write the missing outputs[s] (DEGRADATIONS[method] of `source` mod-cropped to s, as the LR cache); how many."""
    from drn_lightning.data.pyramid import chw, hwc, mod_crop  # lazily: pyramid imports torch, and this module
    from drn_lightning.ops.degrade import DEGRADATIONS

    h, w = read_image_size(source)
    todo = {s: path for s, path in outputs.items() if not _complete(path, (h // s, w // s))}
    image = read_image(source) if todo else np.empty(0)
    for s, path in todo.items():
        lr = hwc(DEGRADATIONS[method](chw(mod_crop(image, s)), s))
        with _disk_errors(path):
            atomic_write(path, partial(save_png, lr))
    return len(todo)


def pyramid(hr_dir: Path, out: Path, scales: Sequence[int], workers: int = DEFAULT_WORKERS) -> None:
    """DIV2K-style LR files for every HR image: out/X{s}/{stem}x{s}.png = bicubic imresize(mod_crop(HR, s), 1/s)."""
    files = _list(hr_dir)
    jobs = [(p, {s: out / f"X{s}" / f"{p.stem}x{s}.png" for s in scales}) for p in files]
    written = sum(_run(_write_lr, jobs, workers, "pyramid"))
    print(f"{out}: wrote {written} LR files, {len(files) * len(scales) - written} were already there")


def unpaired(
    src: Path, out: Path, count: int, degradation: str, scale: int, seed: int, workers: int = DEFAULT_WORKERS
) -> None:
    """The paper's unpaired set (ImageNet-3K recipe): `count` seeded draws below `src`, degraded, + manifest.json."""
    if not src.is_dir():
        raise DataCommandError(f"{src}: source folder does not exist", EXIT_USAGE)
    skip = os.path.abspath(out) + os.sep  # outputs inside SRC are never sources
    files = [p for p in _images(src, "**/*") if p.is_file() and not os.path.abspath(p).startswith(skip)]
    if count > len(files):
        raise DataCommandError(f"{src}: {len(files)} images found, fewer than --count {count}", EXIT_USAGE)
    chosen = [files[i] for i in sorted(np.random.default_rng(seed).choice(len(files), size=count, replace=False))]
    names: dict[str, None] = {}  # an ordered set; equal stems from different folders: x.png, x_2.png, ...
    for path in chosen:
        k = 1
        while (name := f"{path.stem}_{k}.png" if k > 1 else f"{path.stem}.png") in names:
            k += 1
        names[name] = None
    _run(_write_lr, [(p, {scale: out / n}, degradation) for p, n in zip(chosen, names)], workers, "unpaired")
    images = [{"source": p.relative_to(src).as_posix(), "sha256": _hash(p), "output": n} for p, n in zip(chosen, names)]
    meta = {"count": count, "degradation": degradation, "scale": scale, "seed": seed, "images": images}
    write_json(meta, out / "manifest.json")
    print(f"{out}: {count} LR images ({degradation}, x{scale}, seed {seed}) and manifest.json")


def _check_one(image: Path, lr_files: dict[int, Path]) -> list[str]:
    """Problems of one image: undecodable, or (an HR image) an LR file missing, undecodable or not floor(HR / s)."""
    try:
        h, w = read_image(image).shape[:2]
    except (ImageReadError, OSError) as exc:
        return [first_line(exc)]
    problems = []
    for s, lr in lr_files.items():
        try:
            lh, lw = read_image(lr).shape[:2] if lr.is_file() else (-1, -1)
        except (ImageReadError, OSError) as exc:
            problems.append(first_line(exc))
            continue
        if lh < 0:
            problems.append(f"{image}: its x{s} LR file {lr} is missing")
        elif (lh, lw) != (h // s, w // s):
            problems.append(f"{lr}: {lw}x{lh} (WxH), expected {w // s}x{h // s} = floor({w}x{h} / {s}) of {image.name}")
    return problems


def check(root: Path, workers: int = DEFAULT_WORKERS) -> tuple[list[str], int]:
    """(problems, files checked) of `*_HR/` + `*_LR_bicubic/X{s}/`, `HR/` + `LR_bicubic/X{s}/` and image folders."""
    if not root.is_dir():
        raise DataCommandError(f"{root}: folder does not exist", EXIT_USAGE)
    problems: list[str] = []
    jobs: list[tuple[Path, dict[int, Path]]] = []
    paired: set[Path] = set()
    for folder in sorted(Path(d) for d, _, _ in os.walk(root)):  # `*_HR` sorts before its `*_LR_bicubic`
        files, name = _images(folder), folder.name
        if name.endswith("_HR") or name == "HR":
            name = folder.parent.name if name == "HR" else name
            lr_root = folder.with_name(f"{folder.name[:-2]}LR_bicubic")
            lr_dirs = {int(d.name[1:]): d for d in sorted(lr_root.glob("X*")) if d.name[1:].isdigit() and d.is_dir()}
            paired.update(lr_dirs.values())
            wanted = {(s, f"{p.stem}x{s}.png") for s in lr_dirs for p in files}
            extra = [p for s, d in lr_dirs.items() for p in _images(d) if (s, p.name) not in wanted]
            problems += [f"{p}: extra LR file, no HR image for it in {folder}" for p in extra]
            jobs += [(p, {s: d / f"{p.stem}x{s}.png" for s, d in lr_dirs.items()}) for p in files]
        elif folder.parent.name.endswith("LR_bicubic"):
            if files and folder not in paired:
                problems.append(f"{folder}: LR folder without its HR folder")
            continue
        else:  # a plain image folder (a benchmark set as bare images, unpaired LR): decodability only
            jobs += [(p, {}) for p in files]
        if files and len(files) != EXPECTED_COUNTS.get(name, len(files)):
            problems.append(f"{folder}: {len(files)} images, {name} has {EXPECTED_COUNTS[name]}")
    if not jobs:
        raise DataCommandError(f"{root}: no images found", EXIT_USAGE)
    problems += [line for found in _run(_check_one, jobs, workers, "check") for line in found]
    return problems, len(jobs) + sum(len(lrs) for _, lrs in jobs)


def at_least(minimum: int, many: bool = False) -> Callable[[str], Any]:
    """argparse type: an integer >= minimum, or with `many` comma-separated ones ("2,4,8" -> [2, 4, 8])."""

    def parse(text: str) -> Any:
        try:
            values = sorted({int(v) for v in text.split(",")}) if many else [int(text)]
        except ValueError:
            values = []
        if not values or values[0] < minimum:
            what = "comma-separated integers" if many else "an integer"
            raise argparse.ArgumentTypeError(f"expected {what} >= {minimum}, got {text!r}")
        return values if many else values[0]

    return parse


def _handle(args: argparse.Namespace) -> int:
    """Run the chosen `drn-sr data` verb; returns the exit code."""
    if args.data_command == "fetch":
        fetch(args.dataset, args.root, args.mirror)
    elif args.data_command == "df2k":
        build_df2k(args.root)
    elif args.data_command == "pyramid":
        pyramid(args.hr_dir, args.out, args.scales, args.workers)
    elif args.data_command == "unpaired":
        unpaired(args.src, args.out, args.count, args.degradation, args.scale, args.seed, args.workers)
    else:
        problems, checked = check(args.root, args.workers)
        print("\n".join([*problems, f"{args.root}: checked {checked} image files, {len(problems)} problem(s)"]))
        return EXIT_USAGE if problems else EXIT_OK
    return EXIT_OK


def add_data_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Register `data` and its verbs on a parser's sub-parsers; each verb sets handler(args) -> exit code."""
    data = subparsers.add_parser("data", help="download, link, degrade and check SR data sets")
    verbs = data.add_subparsers(dest="data_command", required=True, metavar="{fetch,df2k,pyramid,unpaired,check}")

    def verb(name: str, text: str, *positional: str) -> argparse.ArgumentParser:
        parser = verbs.add_parser(name, help=text, description=text)
        for arg in positional:
            parser.add_argument(arg.lower(), type=Path, metavar=arg)
        if name != "fetch" and name != "df2k":
            parser.add_argument("--workers", type=at_least(1), default=DEFAULT_WORKERS, help="processes (%(default)s)")
        parser.set_defaults(handler=_handle)
        return parser

    fe = verb("fetch", "download (resumable), verify and unpack DIV2K, Flickr2K or the benchmark sets")
    fe.add_argument("dataset", choices=sorted(ARCHIVES))
    fe.add_argument("--root", required=True, type=Path, metavar="DIR")
    fe.add_argument("--mirror", metavar="URL", help="base URL serving the same file names")
    df = verb("df2k", "link DIV2K train + Flickr2K (HR, LR_bicubic X2/X3/X4) into DIR/DF2K as relative symlinks")
    df.add_argument("--root", required=True, type=Path, metavar="DIR")
    py = verb("pyramid", "write LR_ROOT/X{s}/{stem}x{s}.png: MATLAB bicubic of each HR mod-cropped to s", "HR_DIR")
    py.add_argument("--out", required=True, type=Path, metavar="LR_ROOT")
    py.add_argument("--scales", required=True, type=at_least(2, many=True), metavar="S,S,...")
    un = verb("unpaired", "draw N images below SRC (seeded), degrade them, write only LR PNGs + manifest.json", "SRC")
    un.add_argument("--out", required=True, type=Path, metavar="DIR")
    un.add_argument("--count", required=True, type=at_least(1), metavar="N")
    un.add_argument("--degradation", required=True, choices=("nearest", "bd"))
    un.add_argument("--scale", required=True, type=at_least(2), metavar="S")
    un.add_argument("--seed", required=True, type=at_least(0), metavar="K")
    verb("check", "check layout, counts, LR sizes and decodability below ROOT (exit 2 on any problem)", "ROOT")
    return data
