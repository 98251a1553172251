"""Pretrained downloads: loopback HTTP server only, never the internet."""

import errno
import fcntl
import gzip
import hashlib
import http.server
import io
import json
import multiprocessing as mp
import os
import queue
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from dataclasses import replace

import numpy as np
import pytest

import mindspore as ms

from mindcv.io import download as dl
from mindcv.io.download import (
    DiskFullError,
    DownLoad,
    DownloadError,
    DownloadTimeoutError,
    HTTPStatusError,
    LockTimeoutError,
    NetworkError,
    UnsafeArchiveError,
    download_cached,
    extract_archive,
)
from mindcv.models import create_model, registry
from mindcv.models.pretrained import PretrainedCfg

WEIGHTS = "torchvision_mnasnet0.5.safetensors"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """Every request of this file goes to 127.0.0.1 directly, never through a proxy from the environment."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    hits = None

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.hits.append(self.path)
        super().do_GET()


@pytest.fixture
def server(fixtures_dir):
    hits = []
    handler = type("H", (_CountingHandler,), {"hits": hits})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=fixtures_dir))
    httpd.handle_error = lambda *a: None  # a client that hangs up early (the disk-full tests) is expected
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", hits
    httpd.shutdown()
    httpd.server_close()


def _sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_download_once_then_cached(server, fixtures_dir, tmp_path):
    base, hits = server
    sha = _sha256(os.path.join(fixtures_dir, WEIGHTS))
    first = download_cached(base + WEIGHTS, hash_prefix=sha[:10], cache_dir=str(tmp_path), progress=False)
    second = download_cached(base + WEIGHTS, sha256=sha, cache_dir=str(tmp_path), progress=False)
    assert first == second and _sha256(first) == sha
    assert hits == ["/" + WEIGHTS]


@pytest.mark.slow
def test_hash_mismatch_leaves_nothing_behind(server, tmp_path):
    base, _ = server
    with pytest.raises(DownloadError, match="does not match the published deadbeef"):
        download_cached(base + WEIGHTS, hash_prefix="deadbeef", cache_dir=str(tmp_path), progress=False)
    assert [f for f in os.listdir(tmp_path / "checkpoints") if not f.endswith(".lock")] == []


def test_offline_error_says_what_to_do(tmp_path):
    with pytest.raises(DownloadError, match=r"No network access\?.*put it at '.*weights.ckpt'"):
        download_cached("http://127.0.0.1:9/weights.ckpt", cache_dir=str(tmp_path), progress=False, timeout=5)


@pytest.mark.slow
def test_http_error_is_reported(server, tmp_path):
    base, _ = server
    with pytest.raises(DownloadError, match="could not download .*missing.ckpt"):
        download_cached(base + "missing.ckpt", cache_dir=str(tmp_path), progress=False)


def _download_worker(url, sha, cache, queue):
    queue.put(download_cached(url, sha256=sha, cache_dir=cache, progress=False))


@pytest.mark.slow
def test_eight_processes_download_once(server, fixtures_dir, tmp_path):
    base, hits = server
    sha = _sha256(os.path.join(fixtures_dir, WEIGHTS))
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_download_worker, args=(base + WEIGHTS, sha, str(tmp_path), queue)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 8
    paths = {queue.get(timeout=5) for _ in procs}
    assert len(paths) == 1 and _sha256(paths.pop()) == sha
    assert hits == ["/" + WEIGHTS]


@pytest.mark.slow
def test_pretrained_true_downloads_converts_and_loads(server, fixtures_dir, monkeypatch):
    base, hits = server
    sha = _sha256(os.path.join(fixtures_dir, WEIGHTS))
    cfg = PretrainedCfg(url=base + WEIGHTS, hash_prefix=sha[:10], layout="torchvision", bn_eps=1e-5, num_classes=10)
    monkeypatch.setitem(registry._model_pretrained_cfgs, "mnasnet_050", cfg)
    model = create_model("mnasnet_050", num_classes=10, pretrained=True)
    assert model.bn_eps == 1e-5 and model.pretrained_cfg is cfg
    ref = np.load(os.path.join(fixtures_dir, "torchvision_mnasnet0.5_reference.npz"))
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    model.set_train(False)
    assert np.abs(model(ms.Tensor(x)).asnumpy() - ref["logits"]).max() < 1e-4
    # fine-tuning head: other class count keeps a fresh classifier, the backbone is loaded
    tuned = create_model("mnasnet_050", num_classes=4, pretrained=True)
    assert tuned.classifier.weight.shape == (4, 1280)
    assert hits == ["/" + WEIGHTS]  # the second model reused the cache


def test_pretrained_tags_and_errors(monkeypatch):
    assert registry.list_pretrained_tags("mnasnet_100") == ["mindcv_in1k", "tv_in1k", "timm_in1k"]
    with pytest.raises(ValueError, match="no weights tagged 'nope'; available tags: mindcv_in1k, tv_in1k, timm_in1k"):
        create_model("mnasnet_100.nope", pretrained=True)
    with pytest.raises(ValueError, match="'semnasnet_050' has no published weights"):
        create_model("semnasnet_050", pretrained=True)
    tv = registry.get_pretrained_cfg("mnasnet_100", "tv_in1k")
    assert (tv.layout, tv.bn_eps, tv.hash_prefix, tv.top1, tv.eval_resize) == (
        "torchvision",
        1e-5,
        "f206786ef8",
        73.456,
        256,
    )


def test_every_published_weight_carries_complete_metadata():
    from mindcv.models.mnasnet import pretrained_tags

    for name, tags in pretrained_tags.items():
        for tag, cfg in tags.items():
            assert cfg.num_params == registry.get_pretrained_cfg(name).num_params
            if not cfg.url:
                assert tag == "untrained"
                continue
            assert cfg.url.startswith("https://") and len(cfg.hash_prefix) >= 8, (name, tag)
            assert cfg.url.rsplit("-", 1)[1].startswith(cfg.hash_prefix)
            assert 60 < cfg.top1 < 80 and 80 < cfg.top5 < 95 and cfg.recipe and cfg.license, (name, tag)
            assert cfg.layout in ("mindcv_upstream", "torchvision", "timm") and cfg.interpolation in (
                "bilinear",
                "bicubic",
            )
            assert cfg.input_size == (3, 224, 224) and cfg.eval_resize in (232, 256)


@pytest.mark.slow
def test_offline_pretrained_fails_clearly(monkeypatch):
    cfg = replace(registry.get_pretrained_cfg("mnasnet_050"), url="http://127.0.0.1:9/mnasnet_050-7d8bf4db.ckpt")
    monkeypatch.setitem(registry._model_pretrained_cfgs, "mnasnet_050", cfg)
    with pytest.raises(DownloadError, match="No network access"):
        create_model("mnasnet_050", pretrained=True)


# ------------------------------------------------------------------------------------------------------
# Archives: every escaping member is refused, the whole archive with it, and nothing lands anywhere.


def _tree(root):
    """Every path under ``root`` (links not followed), with file contents: to prove nothing was written."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = (
                os.readlink(path) if os.path.islink(path) else open(path, "rb").read() if os.path.isfile(path) else None
            )
    return out


def _make_tar(path, members, mode="w"):
    """members: (name, kind, payload), kind file / suid (a set-uid file) / dir / sym / lnk / chr."""
    with tarfile.open(path, mode) as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind in ("file", "suid"):
                info.mode = 0o6777 if kind == "suid" else 0o644
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            types = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "lnk": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE}
            info.type = types[kind]
            if kind in ("sym", "lnk"):
                info.linkname = payload
            if kind == "dir":
                info.mode = 0o755
            tar.addfile(info)
    return str(path)


def _make_zip(path, members):
    """members: (name, payload) files, or (name, payload, unix_mode) e.g. a symlink with S_IFLNK."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, payload, *mode in members:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (mode[0] if mode else stat.S_IFREG | 0o644) << 16
            zf.writestr(info, payload)
    return str(path)


@pytest.fixture
def sandbox(tmp_path):
    """(archives folder, target folder that does not exist yet, the parent whose tree must not change)."""
    (tmp_path / "archives").mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "keep.txt").write_bytes(b"user data")
    return tmp_path / "archives", tmp_path / "work" / "out", tmp_path


BAD_TARS = {
    "dotdot": ([("good.txt", "file", b"ok"), ("../x", "file", b"pwned")], "../x", "'..' component"),
    "absolute": ([("good.txt", "file", b"ok"), ("{abs}", "file", b"pwned")], "{abs}", "absolute path"),
    "symlink_then_write_through": (
        [("evil", "sym", "../../work"), ("evil/pwned.txt", "file", b"pwned")],
        "evil",
        "points outside the target folder",
    ),
    "absolute_symlink": ([("evil", "sym", "/etc")], "evil", "points outside"),
    "symlink_chain": ([("s", "sym", "."), ("t", "sym", "s/s/s/..")], "t", "points outside"),
    "write_through_inside_link": (
        [("sub", "dir", None), ("ok", "sym", "sub"), ("ok/x.txt", "file", b"x")],
        "ok/x.txt",
        "written through the symbolic link",
    ),
    "hardlink_outside": ([("good.txt", "file", b"ok"), ("hl", "lnk", "../work/keep.txt")], "hl", "hard link"),
    "hardlink_absolute": ([("hl", "lnk", "{abs_keep}")], "hl", "absolute path"),
    "hardlink_to_symlink": (
        [("s", "sym", "good.txt"), ("good.txt", "file", b"ok"), ("hl", "lnk", "s")],
        "hl",
        "not a file stored earlier",
    ),
    "device": ([("good.txt", "file", b"ok"), ("null", "chr", None)], "null", "device file"),
}


@pytest.mark.parametrize("case", sorted(BAD_TARS))
def test_tar_that_escapes_is_refused_and_writes_nothing(sandbox, case):
    archives, target, root = sandbox
    members, bad, why = BAD_TARS[case]
    subst = {"{abs}": str(root / "work" / "abs_escape.txt"), "{abs_keep}": str(root / "work" / "keep.txt")}
    fill = lambda v: subst.get(v, v) if isinstance(v, str) else v  # noqa: E731
    archive = _make_tar(archives / "bad.tar.gz", [(fill(n), k, fill(p)) for n, k, p in members], "w:gz")
    before = _tree(root)
    with pytest.raises(UnsafeArchiveError, match=why) as err:
        extract_archive(archive, str(target))
    assert "bad.tar.gz" in str(err.value) and fill(bad) in str(err.value)
    assert err.value.archive == archive and err.value.member == fill(bad)
    assert _tree(root) == before  # not even the target folder or a temporary one was left


@pytest.mark.parametrize(
    "members, bad, why",
    [
        ([("good.txt", b"ok"), ("../x", b"pwned")], "../x", "'..' component"),
        ([("good.txt", b"ok"), ("/abs_escape.txt", b"pwned")], "/abs_escape.txt", "absolute path"),
        ([("a\\..\\..\\x", b"pwned")], "a\\..\\..\\x", "'..' component"),
        ([("link", b"../../work", stat.S_IFLNK | 0o777), ("link/x", b"pwned")], "link", "points outside"),
        ([("link", b"/etc/passwd", stat.S_IFLNK | 0o777)], "link", "points outside"),
        ([("dev", b"", stat.S_IFCHR | 0o644)], "dev", "device file"),
    ],
)
def test_zip_that_escapes_is_refused_and_writes_nothing(sandbox, members, bad, why):
    archives, target, root = sandbox
    archive = _make_zip(archives / "bad.zip", members)
    before = _tree(root)
    with pytest.raises(UnsafeArchiveError, match=why) as err:
        DownLoad().extract_zip(archive, str(target))
    assert "bad.zip" in str(err.value) and repr(bad) in str(err.value)
    assert _tree(root) == before


def test_zip_bomb_is_refused_by_the_size_limit(sandbox, monkeypatch):
    archives, target, root = sandbox
    with zipfile.ZipFile(archives / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(4):
            zf.writestr(f"zeros{i}.bin", b"\0" * (1 << 20))  # 4 MiB unpacked from a few KiB
    assert os.path.getsize(archives / "bomb.zip") < 50_000
    before = _tree(root)
    with pytest.raises(UnsafeArchiveError, match=r"unpacks to 4194304 bytes, more than the limit of 1000000"):
        extract_archive(str(archives / "bomb.zip"), str(target), max_bytes=1_000_000)
    monkeypatch.setenv(dl.MAX_EXTRACT_ENV, "2e6")  # the limit is configurable from the environment too
    with pytest.raises(UnsafeArchiveError, match="limit of 2000000"):
        DownLoad().extract_archive(str(archives / "bomb.zip"), str(target))
    assert _tree(root) == before
    monkeypatch.delenv(dl.MAX_EXTRACT_ENV)
    assert len(os.listdir(extract_archive(str(archives / "bomb.zip"), str(target)))) == 4  # the default is 64 GiB


@pytest.mark.parametrize("python_filter", [True, False], ids=["data_filter", "older_python"])
def test_safe_archives_extract_with_links_inside(sandbox, monkeypatch, python_filter):
    archives, target, root = sandbox
    if not python_filter:  # a Python before 3.11.4 has no extraction filters: the module's own checks suffice
        monkeypatch.delattr(tarfile, "data_filter")
    tar = _make_tar(
        archives / "data.tgz",
        [
            ("data", "dir", None),
            ("data/a.bin", "file", b"A" * 10),
            ("data/suid", "suid", b"#!"),
            ("data/sub", "dir", None),
            ("data/sub/b.bin", "file", b"B"),
            ("data/latest", "sym", "sub/b.bin"),
            ("data/up", "sym", "../data/a.bin"),
            ("data/hard", "lnk", "data/a.bin"),
        ],
        "w:gz",
    )
    assert DownLoad().extract_tar(tar, str(target), compression=".gz") == str(target)
    assert (target / "data/latest").read_bytes() == b"B" and os.readlink(target / "data/latest") == "sub/b.bin"
    assert (target / "data/up").read_bytes() == b"A" * 10
    assert os.stat(target / "data/hard").st_ino == os.stat(target / "data/a.bin").st_ino
    assert not os.stat(target / "data/suid").st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_IWOTH)
    zf = _make_zip(archives / "z.zip", [("d/x.txt", b"x"), ("d/ln", b"x.txt", stat.S_IFLNK | 0o777)])
    assert extract_archive(zf, str(target)) == str(target)  # into an existing folder: merged
    assert (target / "d/x.txt").read_bytes() == b"x" and os.readlink(target / "d/ln") == "x.txt"
    assert sorted(os.listdir(target)) == ["d", "data"]  # no temporary folder left behind
    assert sorted(os.listdir(root / "work")) == ["keep.txt", "out"]


def test_failed_extraction_leaves_no_half_extracted_folder(sandbox, monkeypatch):
    archives, target, root = sandbox
    archive = _make_tar(archives / "three.tar", [(f"set/f{i}.bin", "file", bytes([i]) * 100) for i in range(3)])
    real_copy, calls = tarfile.copyfileobj, []

    def disk_fills_on_second_file(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(tarfile, "copyfileobj", disk_fills_on_second_file)
    before = _tree(root)
    with pytest.raises(DiskFullError, match=r"no space left on device writing .*out: .* MB free"):
        extract_archive(archive, str(target))
    assert _tree(root) == before  # neither 'out' nor a temporary folder with f0.bin exists
    (target / "set").mkdir(parents=True)
    (target / "set" / "mine.txt").write_bytes(b"mine")
    calls.clear()
    with pytest.raises(DiskFullError):
        extract_archive(archive, str(target))
    assert sorted(os.listdir(target)) == ["set"] and os.listdir(target / "set") == ["mine.txt"]
    monkeypatch.setattr(tarfile, "copyfileobj", real_copy)
    extract_archive(archive, str(target))
    assert sorted(os.listdir(target / "set")) == ["f0.bin", "f1.bin", "f2.bin", "mine.txt"]


def test_upstream_helpers(sandbox, server, fixtures_dir):
    archives, target, root = sandbox
    base, hits = server
    down = DownLoad(progress=False)
    weights = os.path.join(fixtures_dir, WEIGHTS)
    md5 = hashlib.md5(open(weights, "rb").read()).hexdigest()
    assert DownLoad.calculate_md5(weights) == md5 and down.check_md5(weights, md5) and not down.check_md5(weights)
    down.download_file(base + WEIGHTS, str(archives / "sub" / "w.bin"))
    assert down.calculate_md5(str(archives / "sub" / "w.bin")) == md5
    assert down.download_url(base + WEIGHTS, str(archives), md5=md5) == str(archives / WEIGHTS)
    with pytest.raises(DownloadError, match="md5 .* does not match the published 0000"):
        down.download_url(base + WEIGHTS, str(archives / "other"), md5="0" * 32)
    assert [f for f in os.listdir(archives / "other") if not f.endswith(".lock")] == []
    (archives / "plain.bin.gz").write_bytes(gzip.compress(b"hello"))
    assert down.extract_archive(str(archives / "plain.bin.gz")) == str(archives / "plain.bin")
    assert (archives / "plain.bin").read_bytes() == b"hello"
    with pytest.raises(DownloadError, match="cannot read archive"):
        (archives / "broken.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
        down.extract_archive(str(archives / "broken.tar.gz"), str(target))
    assert not target.exists()


def test_upstream_import_path_is_the_io_module():
    """``mindcv.utils.download`` (upstream mindcv's module, kept for its users) is mindcv.io.download's API."""
    from mindcv.utils import download as upstream_path

    assert upstream_path.__all__ == dl.__all__
    assert all(getattr(upstream_path, name) is getattr(dl, name) for name in dl.__all__)


@pytest.mark.slow
def test_download_and_extract_archive_refuses_dotdot(tmp_path):
    serve = tmp_path / "serve"
    serve.mkdir()
    _make_tar(serve / "evil.tar.gz", [("ok.txt", "file", b"ok"), ("../x", "file", b"pwned")], "w:gz")
    _make_tar(serve / "good.tar.gz", [("pkg/ok.txt", "file", b"ok")], "w:gz")
    with _serving(_files_handler(str(serve))) as base:
        down = DownLoad(progress=False)
        dest = tmp_path / "dl"
        with pytest.raises(UnsafeArchiveError, match=r"evil\.tar\.gz.*'\.\./x'"):
            down.download_and_extract_archive(base + "evil.tar.gz", str(dest))
        assert not (tmp_path / "x").exists()
        assert sorted(os.listdir(dest)) == [dl.GUARD_NAME, "evil.tar.gz", "evil.tar.gz.lock"]
        out = down.download_and_extract_archive(base + "good.tar.gz", str(dest), str(dest / "x"), remove_finished=True)
        assert out == str(dest / "x") and (dest / "x" / "pkg" / "ok.txt").read_bytes() == b"ok"
        assert not (dest / "good.tar.gz").exists()


# ------------------------------------------------------------------------------------------------------
# Downloads: deadline, bounded lock waits, stale locks, and errors that say what happened.


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _files_handler(directory):
    quiet = type("Files", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    return lambda *a: quiet(*a, directory=directory)


class _serving:
    """A loopback HTTP server for the duration of a ``with`` block; its handlers are bounded in time."""

    def __init__(self, handler):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *a: None

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class _Trickle(_Quiet):
    """Announces 1000 bytes, then sends one every 0.2 s (for at most 8 s, or until the client hangs up).

    With an ``endings`` queue (see :func:`_recording`), puts there how many bytes it had sent when the client hung
    up, or None if it sent everything."""

    endings = None

    def _trickle(self, data: bytes) -> None:
        sent = None
        try:
            for i, byte in enumerate(data):
                sent = i
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
            sent = None
        except OSError:
            pass
        if self.endings is not None:
            self.endings.put(sent)

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self._trickle(b"x" * 40)


class _TrickleHeaders(_Trickle):
    """Even the status line comes one byte every 0.2 s (at most ~8 s)."""

    def do_GET(self):
        self.close_connection = True
        self._trickle(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")  # the headers: 38 bytes


def _recording(handler):
    """``handler`` with an ``endings`` queue of its own."""
    return type(handler.__name__, (handler,), {"endings": queue.Queue()})


def _assert_client_hung_up_early(handler):
    """The download gave up at its deadline while the server was still trickling: not after the whole trickle,
    nor (for the headers) once they were complete. 30 bytes take the server 6 s to send, 6x the deadline."""
    try:
        sent = handler.endings.get(timeout=60)  # a trickle lasts 8 s at most
    except queue.Empty:
        pytest.fail("the trickling server never finished its response")
    assert sent is not None, "the download waited for the whole trickle: its deadline did not stop it"
    assert sent < 30, f"the download hung up only after {sent} bytes (one every 0.2 s): its deadline did not stop it"


def _assert_unlocked(lock_path):
    fd = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if still held
    finally:
        os.close(fd)


@pytest.mark.parametrize("handler", [_Trickle, _TrickleHeaders], ids=["body", "headers"])
@pytest.mark.slow
def test_trickling_server_hits_the_deadline_and_releases_the_lock(tmp_path, handler):
    handler = _recording(handler)
    with _serving(handler) as base:
        with pytest.raises(DownloadTimeoutError) as err:
            download_cached(base + "slow.ckpt", cache_dir=str(tmp_path), progress=False, timeout=5, deadline=1.0)
        _assert_client_hung_up_early(handler)  # the 1 s deadline, not the 5 s read timeout or the trickle's end
    message = str(err.value)
    assert base + "slow.ckpt" in message and "deadline of 1 s" in message and "bytes received" in message
    if not issubclass(handler, _TrickleHeaders):
        received = int(message.split("(")[1].split(" of 1000 bytes received")[0])
        assert 1 <= received < 1000
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [dl.GUARD_NAME, "slow.ckpt.lock"]  # no partial file
    _assert_unlocked(tmp_path / "checkpoints" / "slow.ckpt.lock")


@pytest.mark.slow
def test_deadline_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(dl.DEADLINE_ENV, "0.8")
    handler = _recording(_Trickle)
    with _serving(handler) as base:
        with pytest.raises(DownloadTimeoutError, match=r"deadline of 0\.8 s"):
            DownLoad(progress=False).download_url(base + "slow.bin", str(tmp_path))
        _assert_client_hung_up_early(handler)


def _hold_lock(lock_path, ready, release):
    with dl._file_lock(lock_path, what="downloading http://example/weights.ckpt"):
        ready.set()
        release.wait(20)


@pytest.mark.slow
def test_waiting_for_a_live_holder_is_bounded_and_names_it(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(folder / "w.ckpt.lock"), ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        start = time.monotonic()
        with pytest.raises(LockTimeoutError) as err:
            download_cached("http://127.0.0.1:9/w.ckpt", cache_dir=str(tmp_path), progress=False, lock_timeout=1)
        assert time.monotonic() - start > 0.9  # waited its lock_timeout (a lower bound: never flaky)
        assert holder.is_alive() and not release.is_set()  # gave up while the lock was held (the holder waits 20 s)
        message = str(err.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message
        assert "downloading http://example/weights.ckpt" in message and "since" in message
    finally:
        release.set()
        holder.join(10)
    assert holder.exitcode == 0
    _assert_unlocked(folder / "w.ckpt.lock")  # released (and its record cleared) by the holder
    assert (folder / "w.ckpt.lock").read_bytes() == b""


def _lock_then_die_leaving_a_child(lock_path):
    """Fork a child that takes the lock, forks a grandchild inheriting the locked descriptor, and dies
    without unlocking; reap it. Returns (dead child's pid, grandchild's pid): the lock file names the
    dead pid while the grandchild keeps the flock."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            with dl._file_lock(lock_path, what="downloading (stale)"):
                grandchild = os.fork()
                if grandchild == 0:
                    time.sleep(20)
                    os._exit(0)
                os.write(write_end, b"%d\n" % grandchild)
                os._exit(0)  # inside the with block: never unlocks
        finally:
            os._exit(1)
    os.close(write_end)
    try:
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(read_end, 32)
            assert chunk, "the child died before taking the lock"
            line += chunk
    finally:
        os.close(read_end)
    os.waitpid(child, 0)
    return child, int(line)


@pytest.mark.slow
def test_a_lock_recorded_for_a_dead_pid_is_broken(server, fixtures_dir, tmp_path, caplog):
    base, _ = server
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    lock = folder / (WEIGHTS + ".lock")
    dead, grandchild = _lock_then_die_leaving_a_child(str(lock))
    try:
        with pytest.raises(BlockingIOError):
            _assert_unlocked(lock)
        assert json.loads(lock.read_text())["pid"] == dead
        with caplog.at_level("WARNING", logger="mindcv.io.download"):
            path = download_cached(base + WEIGHTS, cache_dir=str(tmp_path), progress=False, lock_timeout=10)
        os.kill(grandchild, 0)  # still alive, its flock held: the lock was broken, not waited out (10 s would fail)
        assert open(path, "rb").read() == open(os.path.join(fixtures_dir, WEIGHTS), "rb").read()
        assert f"breaking the stale lock {lock} of pid {dead} on host" in caplog.text
    finally:
        os.kill(grandchild, signal.SIGKILL)


@pytest.mark.slow
def test_disk_full_is_reported_as_disk_full_and_leaves_no_partial_file(server, tmp_path, monkeypatch):
    base, _ = server

    def disk_full(out, chunk):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dl, "_write_chunk", disk_full)
    with pytest.raises(DiskFullError) as err:
        download_cached(base + WEIGHTS, cache_dir=str(tmp_path), progress=False)
    message = str(err.value)
    size_mb = os.path.getsize(os.path.join(os.path.dirname(__file__), "fixtures", WEIGHTS)) / 1e6
    assert f"no space left on device writing {tmp_path / 'checkpoints' / WEIGHTS}: " in message
    assert f"MB free, the file needs {size_mb:.1f} MB" in message
    assert "network" not in message.lower()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [dl.GUARD_NAME, WEIGHTS + ".lock"]


@pytest.mark.slow
def test_a_file_larger_than_the_free_space_is_refused_before_downloading(server, tmp_path, monkeypatch):
    base, _ = server
    usage = shutil.disk_usage(str(tmp_path))
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(DiskFullError, match=r"0\.0 MB free, the file needs \d\.\d MB"):
        download_cached(base + WEIGHTS, cache_dir=str(tmp_path), progress=False)
    assert [f for f in os.listdir(tmp_path / "checkpoints") if not f.endswith(".lock")] == []


class _NoLength(_Quiet):
    """200 KiB without a Content-Length (HTTP/1.0, ends when the connection closes)."""

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        try:
            for _ in range(50):
                self.wfile.write(b"\1" * 4096)
        except OSError:
            pass
        self.close_connection = True


_TMPFS_CHILD = """
import os, sys
import mindcv.io.download as dl
try:
    dl.download_cached(sys.argv[2], cache_dir=sys.argv[3], progress=False, deadline=30)
except dl.DiskFullError as err:
    print("DISKFULL", err)
print("LEFT", sorted(os.listdir(os.path.join(sys.argv[3], "checkpoints"))))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare for a tmpfs")
@pytest.mark.slow
def test_a_real_full_tmpfs(tmp_path):
    """A 64 KiB tmpfs mounted in a private mount namespace (gone with the child process)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with _serving(_NoLength) as base:
        script = 'mount -t tmpfs -o size=64k tmpfs "$1" || exit 77; shift; exec "$@"'
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(mnt), sys.executable]
        cmd += ["-c", _TMPFS_CHILD, dl.__file__, base + "big.bin", str(mnt)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 and ("Operation not permitted" in proc.stderr or proc.returncode == 77):
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr
    assert f"DISKFULL no space left on device writing {mnt}/checkpoints/big.bin: 0.0 MB free" in proc.stdout
    assert "the full size is unknown" in proc.stdout
    assert f"LEFT ['{dl.GUARD_NAME}', 'big.bin.lock']" in proc.stdout
    assert os.listdir(mnt) == []  # the mount never existed outside the child


class _Status(_Quiet):
    def do_GET(self):
        self.send_error(500 if self.path == "/boom.ckpt" else 404)


@pytest.mark.parametrize("name, status", [("missing.ckpt", 404), ("boom.ckpt", 500)])
@pytest.mark.slow
def test_http_status_is_named(tmp_path, name, status):
    with _serving(_Status) as base:
        with pytest.raises(HTTPStatusError, match=rf"could not download {base}{name}: HTTP {status} ") as err:
            download_cached(base + name, cache_dir=str(tmp_path), progress=False)
    assert err.value.status == status and "network" not in str(err.value).lower()
    assert [f for f in os.listdir(tmp_path / "checkpoints") if not f.endswith(".lock")] == []


def test_connection_refused_and_unresolvable_host_say_no_network(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    with pytest.raises(NetworkError, match=r"cannot connect: connection refused .* No network access\?"):
        download_cached(f"http://127.0.0.1:{port}/w.ckpt", cache_dir=str(tmp_path), progress=False, timeout=5)

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)  # no query leaves the machine
    with pytest.raises(NetworkError, match=r"cannot resolve the host name .* No network access\?"):
        download_cached("http://mirror.invalid/w.ckpt", cache_dir=str(tmp_path), progress=False, timeout=5)
    assert [f for f in os.listdir(tmp_path / "checkpoints") if not f.endswith(".lock")] == []
