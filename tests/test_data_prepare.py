"""`drn-sr data` (issue 20), offline: fixture archives of real photos served by a local HTTP server with Range support,
every verb called through an argparse parser built with `add_data_commands`."""

from __future__ import annotations

import argparse
import errno
import hashlib
import io
import json
import os
import shutil
import socket
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from drn_lightning.data import prepare
from drn_lightning.data.io import read_image
from drn_lightning.data.prepare import Archive, add_data_commands


def drn_data(*argv: object) -> int:
    """`drn-sr data ARGV` as the CLI runs it: expected failures become one `error:` line and their exit code."""
    parser = argparse.ArgumentParser(prog="drn-sr")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", *map(str, argv)])
    try:
        return args.handler(args)
    except prepare.DataCommandError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_of(members: list[tuple[str, bytes | None, str | None, bytes]]) -> bytes:
    """(name, file data or None, link target or None, link type) members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data, link, kind in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = kind, link or ""
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def pin(monkeypatch: pytest.MonkeyPatch, dataset: str, files: dict[str, bytes], into: str = "", md5: bool = False):
    """Point ARCHIVES[dataset] at fixture archives: SHA-256 and size, or (like Flickr2K) only the MD5."""
    archives = [
        Archive(f"http://unused.invalid/{name}", f"md5:{hashlib.md5(data).hexdigest()}", None, into)
        if md5
        else Archive(f"http://unused.invalid/{name}", f"sha256:{hashlib.sha256(data).hexdigest()}", len(data), into)
        for name, data in files.items()
    ]
    monkeypatch.setitem(prepare.ARCHIVES, dataset, archives)


@pytest.fixture
def photos(skimage_photos: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Small crops of real photos, sizes not multiples of 8 (mod-crop matters)."""
    p = skimage_photos
    return {
        "0001": p["astronaut"][40:101, 150:225],
        "0002": p["coffee"][100:150, 200:266],
        "0003": p["chelsea"][50:94, 120:181],
    }


class _Handler(BaseHTTPRequestHandler):
    """Serves `server.files` with Range (206/416), logs (name, Range header), can drop a transfer after N bytes."""

    def do_GET(self) -> None:
        server: Any = self.server
        name, wanted = self.path.lstrip("/"), self.headers.get("Range")
        server.log.append((name, wanted))
        data = server.files.get(name)
        if data is None:
            self.send_error(404)
            return
        ranged = wanted is not None and not server.ignore_range
        start = int(wanted[len("bytes=") :].split("-")[0]) if ranged else 0
        if start >= len(data) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        self.send_response(206 if ranged else 200)
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        cut = server.drop.pop(name, None)
        self.wfile.write(data[start:] if cut is None else data[start : start + cut])  # HTTP/1.0: then it closes

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Any]:
    httpd: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.log, httpd.drop, httpd.ignore_range = {}, [], {}, False
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def one_error_line(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def test_fetch_unpacks_verified_archives_and_never_downloads_twice(tmp_path, server, monkeypatch, photos, capsys):
    hr_zip = zip_of({f"DIV2K_train_HR/{k}.png": png(v) for k, v in photos.items()})
    lr_zip = zip_of({f"DIV2K_train_LR_bicubic/X2/{k}x2.png": png(v[::2, ::2]) for k, v in photos.items()})
    server.files = {"DIV2K_train_HR.zip": hr_zip, "DIV2K_train_LR_bicubic_X2.zip": lr_zip}
    pin(monkeypatch, "div2k", server.files, "DIV2K")
    root = tmp_path / "data"
    fetch = ("fetch", "div2k", "--root", root, "--mirror", server.url + "/")
    assert drn_data(*fetch) == 0
    assert sorted(server.log) == [("DIV2K_train_HR.zip", None), ("DIV2K_train_LR_bicubic_X2.zip", None)]
    for k, v in photos.items():
        assert (root / "DIV2K" / "DIV2K_train_HR" / f"{k}.png").read_bytes() == png(v)
        assert (root / "DIV2K" / "DIV2K_train_LR_bicubic" / "X2" / f"{k}x2.png").is_file()
    assert (root / "DIV2K_train_HR.zip").read_bytes() == hr_zip and not list(root.glob("*.part"))
    server.log.clear()
    assert drn_data(*fetch) == 0 and server.log == []  # already extracted
    shutil.rmtree(root / "DIV2K")  # good archives present but not unpacked: unpacked, nothing downloaded
    assert drn_data(*fetch) == 0 and server.log == []
    assert (root / "DIV2K" / "DIV2K_train_HR" / "0001.png").read_bytes() == png(photos["0001"])
    assert capsys.readouterr().err == ""


def test_fetch_resumes_a_dropped_transfer_with_range(tmp_path, server, monkeypatch, photos):
    tar = tar_of([(f"Flickr2K/Flickr2K_HR/00{k}.png", png(v), None, tarfile.REGTYPE) for k, v in photos.items()])
    server.files, server.drop = {"Flickr2K.tar": tar}, {"Flickr2K.tar": len(tar) // 3}
    pin(monkeypatch, "flickr2k", server.files, md5=True)  # Flickr2K publishes only an MD5, no size
    root = tmp_path / "data"
    assert drn_data("fetch", "flickr2k", "--root", root, "--mirror", server.url) == 0
    assert server.log == [("Flickr2K.tar", None), ("Flickr2K.tar", f"bytes={len(tar) // 3}-")]
    assert (root / "Flickr2K" / "Flickr2K_HR" / "000001.png").read_bytes() == png(photos["0001"])


@pytest.mark.parametrize("ignore_range", [False, True], ids=["continues-part", "server-ignores-range"])
def test_fetch_continues_an_existing_part_file(tmp_path, server, monkeypatch, photos, ignore_range):
    data = zip_of({f"DIV2K_valid_HR/{k}.png": png(v) for k, v in photos.items()})
    server.files, server.ignore_range = {"DIV2K_valid_HR.zip": data}, ignore_range
    pin(monkeypatch, "div2k", server.files, "DIV2K")
    root = tmp_path / "data"
    root.mkdir()
    (root / "DIV2K_valid_HR.zip.part").write_bytes(b"x" * 1000 if ignore_range else data[:1000])
    assert drn_data("fetch", "div2k", "--root", root, "--mirror", server.url) == 0
    assert server.log == [("DIV2K_valid_HR.zip", "bytes=1000-")]  # only the remainder asked for
    assert (root / "DIV2K_valid_HR.zip").read_bytes() == data  # a server ignoring Range: restarted cleanly
    assert (root / "DIV2K" / "DIV2K_valid_HR" / "0002.png").read_bytes() == png(photos["0002"])


def test_fetch_wrong_digest_keeps_the_file_aside(tmp_path, server, monkeypatch, photos, capsys):
    data = zip_of({"DIV2K_train_HR/0001.png": png(photos["0001"])})
    server.files = {"DIV2K_train_HR.zip": data}
    monkeypatch.setitem(prepare.ARCHIVES, "div2k", [Archive(f"{server.url}/DIV2K_train_HR.zip", "sha256:" + "0" * 64)])
    root = tmp_path / "data"
    assert drn_data("fetch", "div2k", "--root", root) == 1
    bad = root / "DIV2K_train_HR.zip.bad"
    one_error_line(capsys, f"{server.url}/DIV2K_train_HR.zip", str(bad), "sha256")
    assert bad.read_bytes() == data
    assert sorted(p.name for p in root.iterdir()) == ["DIV2K_train_HR.zip.bad"]  # nothing extracted, no part


@pytest.mark.parametrize("failure", ["refused", "timeout"])
def test_fetch_network_failure_is_one_line_naming_the_url(tmp_path, monkeypatch, capsys, failure):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if failure == "refused":
        listener.close()
    else:
        listener.listen(1)  # accepts into the backlog, never answers
        monkeypatch.setattr(prepare, "TIMEOUT_S", 0.5)
    pin(monkeypatch, "benchmarks", {"benchmark.tar": b"unused"})
    try:
        assert drn_data("fetch", "benchmarks", "--root", tmp_path, "--mirror", f"http://127.0.0.1:{port}") == 1
    finally:
        listener.close()
    one_error_line(capsys, f"http://127.0.0.1:{port}/benchmark.tar", "cannot download")


def test_fetch_full_disk_is_one_line_naming_the_file(tmp_path, server, monkeypatch, capsys):
    server.files = {"benchmark.tar": tar_of([("benchmark/a.txt", b"a" * 5000, None, tarfile.REGTYPE)])}
    pin(monkeypatch, "benchmarks", server.files)

    class FullDisk:
        def __init__(self, handle) -> None:
            self.handle = handle

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_open(file, mode="r", *args, **kwargs):
        handle = open(file, mode, *args, **kwargs)  # noqa: SIM115
        return FullDisk(handle) if "w" in mode or "a" in mode else handle

    monkeypatch.setattr(prepare, "open", full_open, raising=False)
    assert drn_data("fetch", "benchmarks", "--root", tmp_path, "--mirror", server.url) == 1
    one_error_line(capsys, str(tmp_path / "benchmark.tar.part"), os.strerror(errno.ENOSPC))


SYM, HARD, FILE = tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.REGTYPE
ESCAPES = {  # case: (archive name, [(member, link target or None, kind)], the member refused)
    "zip-dotdot": ("evil.zip", [("../evil.png", None, FILE)], "../evil.png"),
    "zip-absolute": ("evil.zip", [("/tmp/evil.png", None, FILE)], "/tmp/evil.png"),
    "tar-dotdot": ("evil.tar", [("benchmark/../../evil.png", None, FILE)], "benchmark/../../evil.png"),
    "tar-symlink": ("evil.tar", [("benchmark/link", "../../outside", SYM)], "benchmark/link"),
    "tar-symlink-absolute": ("evil.tar", [("benchmark/abs", "/etc/passwd", SYM)], "benchmark/abs"),
    "tar-hardlink": ("evil.tar", [("benchmark/hard", "../outside.png", HARD)], "benchmark/hard"),
    # inside on paper, outside on disk: l2 -> "." makes l2/../.. the parent of the root (tarfile's data filter)
    "tar-symlink-chain": ("evil.tar", [("benchmark/l2", ".", SYM), ("benchmark/l1", "l2/../..", SYM)], "benchmark/l1"),
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_fetch_refuses_members_that_leave_the_root(tmp_path, monkeypatch, capsys, photos, case):
    name, members, refused = ESCAPES[case]
    if case == "tar-symlink-chain" and not hasattr(tarfile, "data_filter"):
        pytest.skip("tarfile's data filter needs Python >= 3.10.12 / 3.11.4")
    good = ("benchmark/Set5/HR/baby.png", png(photos["0001"]))
    if name.endswith(".zip"):
        data = zip_of({good[0]: good[1], **{member: b"evil" for member, _, _ in members}})
    else:
        tar_members = [(m, b"evil" if link is None else None, link, kind) for m, link, kind in members]
        data = tar_of([(good[0], good[1], None, FILE), *tar_members])
    root = tmp_path / "data"
    root.mkdir()
    (root / name).write_bytes(data)  # already present: no download, straight to extraction
    pin(monkeypatch, "benchmarks", {name: data})
    assert drn_data("fetch", "benchmarks", "--root", root) == 1
    one_error_line(capsys, "refused", repr(refused))
    assert sorted(os.listdir(tmp_path)) == ["data"]  # nothing outside the root
    if case != "tar-symlink-chain":  # refused before anything is unpacked
        assert sorted(os.listdir(root)) == [name]


def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(image))
    return path


def test_df2k_links_both_sets_relatively_and_idempotently(tmp_path, photos, capsys):
    root = tmp_path / "data"
    sources = []
    for stem, tree, hr, lr in [
        ("0001", "DIV2K", "DIV2K_train_HR", "DIV2K_train_LR_bicubic"),
        ("000001", "Flickr2K", "Flickr2K_HR", "Flickr2K_LR_bicubic"),
    ]:
        sources.append(write_png(root / tree / hr / f"{stem}.png", photos["0001"]))
        sources += [
            write_png(root / tree / lr / f"X{s}" / f"{stem}x{s}.png", photos["0002"][::s, ::s]) for s in (2, 3, 4)
        ]
    assert drn_data("df2k", "--root", root) == 0
    links = sorted(p for p in (root / "DF2K").rglob("*.png"))
    assert len(links) == 8
    for link in links:
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert (root / "DF2K" / "DF2K_train_HR" / "0001.png").resolve() == sources[0].resolve()
    assert (root / "DF2K" / "DF2K_train_LR_bicubic" / "X3" / "000001x3.png").resolve() == sources[6].resolve()
    before = {p: p.lstat().st_mtime_ns for p in links}
    assert drn_data("df2k", "--root", root) == 0  # idempotent: the right links are kept as they are
    assert {p: p.lstat().st_mtime_ns for p in links} == before
    moved = shutil.move(root, tmp_path / "moved")  # relative links survive moving the tree
    assert (Path(moved) / "DF2K" / "DF2K_train_HR" / "000001.png").read_bytes() == png(photos["0001"])
    shutil.rmtree(Path(moved) / "Flickr2K" / "Flickr2K_LR_bicubic" / "X3")
    capsys.readouterr()
    assert drn_data("df2k", "--root", moved) == 2
    one_error_line(capsys, "Flickr2K_LR_bicubic/X3")


def test_pyramid_writes_the_training_cache_bytes_and_resumes(tmp_path, photos):
    from drn_lightning.data.pyramid import LRCache, mod_crop

    hr_dir, out = tmp_path / "Mini_HR", tmp_path / "Mini_LR_bicubic"
    hr_paths = {k: write_png(hr_dir / f"{k}.png", v) for k, v in photos.items()}
    assert drn_data("pyramid", hr_dir, "--out", out, "--scales", "8,2,4", "--workers", "1") == 0
    for s in (2, 4, 8):
        for k, path in hr_paths.items():
            cache = LRCache(tmp_path / f"cache{s}", s)  # level x{s} of a x{s} pyramid: HR mod-cropped to s
            cache.get(path, mod_crop(read_image(path), s))
            assert (out / f"X{s}" / f"{k}x{s}.png").read_bytes() == cache.paths(path)[0].read_bytes()
    outputs = sorted(out.rglob("*.png"))
    assert len(outputs) == 9
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in outputs}
    outputs[0].unlink()
    outputs[1].write_bytes(outputs[1].read_bytes()[:40])  # a damaged file is made again
    assert drn_data("pyramid", hr_dir, "--out", out, "--scales", "2,4,8", "--workers", "2") == 0
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in outputs}
    assert [p for p in outputs if after[p] != before[p]] == outputs[:2]  # only those two rewritten
    assert all(after[p][2] == before[p][2] for p in outputs)
    assert drn_data("check", tmp_path) == 0  # the pyramid is a valid *_HR + *_LR_bicubic/X{s} layout


@pytest.mark.parametrize("degradation", ["nearest", "bd"])
def test_unpaired_is_deterministic_and_manifested(tmp_path, photos, degradation, capsys):
    from drn_lightning.data.pyramid import chw, hwc, mod_crop
    from drn_lightning.ops.degrade import DEGRADATIONS

    src = tmp_path / "imagenet"
    for rel, key in [
        ("n1/x.png", "0001"),
        ("n2/x.png", "0002"),
        ("n3/x.png", "0003"),
        ("n3/y.png", "0002"),
        ("z.png", "0003"),
    ]:
        write_png(src / rel, photos[key])
    Image.fromarray(photos["0001"]).save(src / "n2" / "w.jpg", quality=90)

    def run(out: Path, workers: int) -> int:
        args = ("--count", 5, "--degradation", degradation, "--scale", 4, "--seed", 7, "--workers", workers)
        return drn_data("unpaired", src, "--out", out, *args)

    assert run(tmp_path / "lr1", 1) == 0
    manifest = json.loads((tmp_path / "lr1" / "manifest.json").read_text())
    assert (manifest["count"], manifest["seed"], manifest["scale"]) == (5, 7, 4)
    images = manifest["images"]
    outputs = [entry["output"] for entry in images]
    assert len(set(outputs)) == 5 and {"x.png", "x_2.png"} <= set(outputs)  # 3 of 4 "x" stems are always drawn
    assert sorted(p.name for p in (tmp_path / "lr1").iterdir()) == sorted([*outputs, "manifest.json"])
    for entry in images:
        source = src / entry["source"]
        assert entry["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        want = hwc(DEGRADATIONS[degradation](chw(mod_crop(read_image(source), 4)), 4))
        np.testing.assert_array_equal(read_image(tmp_path / "lr1" / entry["output"]), want)
    first = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "lr1").iterdir()}
    assert run(tmp_path / "lr1", 1) == 0  # again: existing LR files skipped, manifest identical
    again = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "lr1").iterdir()}
    assert {k: v[1] for k, v in again.items()} == {k: v[1] for k, v in first.items()}
    assert all(again[n][0] == first[n][0] for n in outputs)
    assert run(tmp_path / "lr2", 2) == 0  # elsewhere, in a pool: byte-identical
    assert {p.name: p.read_bytes() for p in (tmp_path / "lr2").iterdir()} == {k: v[1] for k, v in first.items()}
    capsys.readouterr()
    assert (
        drn_data(
            "unpaired", src, "--out", tmp_path / "lr3", "--count", 99, "--degradation", "bd", "--scale", 4, "--seed", 0
        )
        == 2
    )
    one_error_line(capsys, "fewer than --count 99")


def test_check_reports_each_kind_of_problem(tmp_path, photos, capsys):
    root = tmp_path / "data"
    hr_dir, lr_root = root / "DIV2K" / "Mini_train_HR", root / "DIV2K" / "Mini_train_LR_bicubic"
    for k, v in photos.items():
        write_png(hr_dir / f"{k}.png", v)
        for s in (2, 4):
            h, w = v.shape[0] // s, v.shape[1] // s
            write_png(lr_root / f"X{s}" / f"{k}x{s}.png", v[::s, ::s][:h, :w])
    write_png(root / "plain" / "a.png", photos["0002"])
    assert drn_data("check", root) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"{root}: checked 10 image files, 0 problem(s)"

    (lr_root / "X2" / "0002x2.png").write_bytes(png(photos["0002"][::2, ::2][:-1]))  # wrong LR size
    (lr_root / "X4" / "0003x4.png").unlink()  # LR missing
    write_png(lr_root / "X2" / "0009x2.png", photos["0001"][:8, :8])  # extra LR without HR
    (hr_dir / "0001.png").write_bytes((hr_dir / "0001.png").read_bytes()[:100])  # undecodable
    write_png(root / "Orphan_LR_bicubic" / "X2" / "ax2.png", photos["0001"][:8, :8])  # LR without HR folder
    os.symlink("gone.png", root / "plain" / "b.png")  # broken link
    write_png(root / "benchmark" / "Set14" / "HR" / "a.png", photos["0001"])  # a known set: 14 images
    assert drn_data("check", root) == 2
    out = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("check: ")]  # progress
    expected = [
        f"{lr_root / 'X2' / '0002x2.png'}: 33x24 (WxH), expected 33x25",
        f"{hr_dir / '0003.png'}: its x4 LR file {lr_root / 'X4' / '0003x4.png'} is missing",
        f"{lr_root / 'X2' / '0009x2.png'}: extra LR file",
        f"{hr_dir / '0001.png'}: cannot decode image",
        f"{root / 'Orphan_LR_bicubic' / 'X2'}: LR folder without its HR folder",
        f"{root / 'plain' / 'b.png'}: image file does not exist",
        f"{root / 'benchmark' / 'Set14' / 'HR'}: 1 images, Set14 has 14",
    ]
    for needle in expected:
        assert sum(line.startswith(needle) for line in out) == 1, (needle, out)
    assert len(out) == len(expected) + 1 and out[-1].endswith(f"{len(expected)} problem(s)")
    assert drn_data("check", tmp_path / "nowhere") == 2
    one_error_line(capsys, "nowhere")
