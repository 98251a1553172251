"""Downloads into a shared cache and archive extraction that cannot write outside its target.

Downloads
    The cache is ``~/.cache/mindcv`` unless ``MINDCV_HOME`` is set. When eight training processes ask for
    the same weights together, one downloads while the others wait on a file lock and then reuse the file.
    A download goes to a temporary file in the destination folder that is renamed into place only once it
    is complete and its hash checks out: nobody ever reads a partial file, and a failed download leaves
    none behind.

    Every download is bounded twice: ``timeout`` (default 60 s) bounds each wait for the network (connect,
    each read), and ``deadline`` (default 3600 s, ``$MINDCV_DOWNLOAD_DEADLINE``) bounds the whole file, so
    a server that trickles bytes cannot hold the lock forever. Waiting for another process's lock is
    bounded by ``lock_timeout`` (default: the deadline plus 300 s, ``$MINDCV_LOCK_TIMEOUT``). The lock file
    names its holder (pid, host, start time, URL); a lock whose recorded holder is a dead process on this
    host is broken. Failures raise a subclass of :class:`DownloadError` that says what happened: no space
    left on the device (:class:`DiskFullError`), an HTTP status (:class:`HTTPStatusError`), no network
    (:class:`NetworkError`), a deadline (:class:`DownloadTimeoutError`), a lock held too long
    (:class:`LockTimeoutError`).

Archives
    :func:`extract_archive` (and upstream's ``DownLoad.extract_archive`` / ``extract_tar`` /
    ``extract_zip``) check every member before writing anything and refuse the whole archive
    (:class:`UnsafeArchiveError`, naming the archive and the member) when a member

    * has an absolute name (``/etc/x``, ``C:\\x``) or a ``..`` component,
    * is a device file, a FIFO or another special file,
    * is a symbolic link whose target is absolute or resolves outside the target folder (following the
      archive's other links, so ``s -> .`` then ``t -> s/s/..`` is caught),
    * is written through a symbolic link of the same archive (``link/x``), or shares its name with one,
    * is a hard link to anything but a regular file stored earlier in the archive,
    * would make the archive unpack to more than ``max_bytes`` (default 64 GiB,
      ``$MINDCV_MAX_EXTRACT_BYTES``): a guard against zip bombs, counted from the headers before
      extracting and again from the bytes actually written (zip headers can lie).

    Tar files are then extracted with Python's ``filter="data"`` as a second line of defence (it also
    drops set-uid bits and ownership); zip members are written by this module, never through a link.
    Everything is extracted into a temporary folder beside the target and moved into place when complete:
    a refused, failed or killed extraction leaves no half-extracted folder that a later run could take as
    complete. When the target folder does not exist yet it appears at once (one rename); when it exists,
    each new top-level entry appears at once and existing folders are merged file by file.
"""

import bz2
import errno
import fcntl
import gzip
import hashlib
import http.client
import json
import logging
import lzma
import math
import os
import re
import shutil
import socket
import ssl
import stat
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections import deque
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlparse

from ..errors import MindcvError, RunFailedError
from .atomic import atomic_path, current_umask
from .progress import progress_bar

__all__ = [
    "CACHE_ENV",
    "DEADLINE_ENV",
    "LOCK_TIMEOUT_ENV",
    "MAX_EXTRACT_ENV",
    "DownloadError",
    "NetworkError",
    "HTTPStatusError",
    "DownloadTimeoutError",
    "DiskFullError",
    "LockTimeoutError",
    "UnsafeArchiveError",
    "get_cache_dir",
    "file_sha256",
    "download_cached",
    "extract_archive",
    "get_default_download_root",
    "set_default_download_root",
    "DownLoad",
]

_logger = logging.getLogger(__name__)
CACHE_ENV = "MINDCV_HOME"
DEADLINE_ENV = "MINDCV_DOWNLOAD_DEADLINE"
LOCK_TIMEOUT_ENV = "MINDCV_LOCK_TIMEOUT"
MAX_EXTRACT_ENV = "MINDCV_MAX_EXTRACT_BYTES"
DEFAULT_TIMEOUT = 60.0
DEFAULT_DEADLINE = 3600.0
LOCK_SLACK = 300.0  # the default lock wait is the deadline plus this: room for hashing and connecting
DEFAULT_MAX_EXTRACT_BYTES = 64 << 30
USER_AGENT = "mindcv-download (Python urllib)"
_CHUNK = 1 << 16
_default_download_root: Optional[str] = None


class DownloadError(MindcvError, RuntimeError):
    """A download failed or its content does not match the published hash."""


class NetworkError(DownloadError):
    """No network: the host cannot be resolved or reached, or the connection broke."""


class HTTPStatusError(DownloadError):
    """The server answered with an HTTP error status."""

    def __init__(self, message: str, url: str, status: int):
        super().__init__(message)
        self.url = url
        self.status = status


class DownloadTimeoutError(DownloadError):
    """A download did not finish within its overall deadline."""


class DiskFullError(DownloadError, RunFailedError):
    """No space left on the device (or over the disk quota) while writing a download or an extraction."""


class LockTimeoutError(DownloadError):
    """Another process held the download lock for longer than this process was willing to wait."""


class UnsafeArchiveError(DownloadError):
    """An archive member would land outside the target folder, is a special file, or the archive is too big."""

    def __init__(self, archive: str, member: str, why: str):
        super().__init__(f"refusing to extract '{archive}': member {member!r} {why}; nothing was extracted")
        self.archive = archive
        self.member = member


# ----------------------------------------------------------------------------------------------- paths


def get_cache_dir() -> str:
    """The cache root: ``$MINDCV_HOME`` or ``~/.cache/mindcv``."""
    return os.path.expanduser(os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "mindcv"))


def get_default_download_root() -> str:
    """Upstream-compatible name for the cache root (``set_default_download_root`` overrides it)."""
    return _default_download_root or get_cache_dir()


def set_default_download_root(path: str) -> None:
    """Override the download root for this process."""
    global _default_download_root
    _default_download_root = path


# ---------------------------------------------------------------------------------------------- hashes


def _file_digest(path: str, algorithm: str, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    return _file_digest(path, "sha256", chunk_size)


def _hash_problem(path: str, sha256: str, hash_prefix: str, md5: str) -> Optional[str]:
    """None when ``path`` matches every given hash, else a description of the first mismatch."""
    if sha256 or hash_prefix:
        actual = file_sha256(path)
        if not (actual == sha256.lower() if sha256 else actual.startswith(hash_prefix.lower())):
            return f"sha256 {actual} does not match the published {sha256 or hash_prefix + '...'}"
    if md5:
        actual = _file_digest(path, "md5")
        if actual != md5.lower():
            return f"md5 {actual} does not match the published {md5}"
    return None


# ------------------------------------------------------------------------------------------- settings


def _env_float(name: str) -> Optional[float]:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"${name}={value!r} is not a number of seconds") from None


def _resolve_deadline(deadline: Optional[float]) -> float:
    if deadline is None:
        deadline = _env_float(DEADLINE_ENV) or DEFAULT_DEADLINE
    if not deadline > 0:
        raise ValueError(f"deadline must be a positive number of seconds (math.inf for none), got {deadline}")
    return float(deadline)


def _resolve_lock_timeout(lock_timeout: Optional[float], deadline: float) -> float:
    if lock_timeout is None:
        lock_timeout = _env_float(LOCK_TIMEOUT_ENV)
    if lock_timeout is None:
        lock_timeout = deadline + LOCK_SLACK
    if not lock_timeout >= 0:
        raise ValueError(f"lock_timeout must be >= 0 seconds (math.inf to wait forever), got {lock_timeout}")
    return float(lock_timeout)


def _resolve_max_bytes(max_bytes: Optional[int]) -> int:
    if max_bytes is None:
        value = os.environ.get(MAX_EXTRACT_ENV, "").strip()
        if value:
            try:
                max_bytes = int(float(value))
            except ValueError:
                raise ValueError(f"${MAX_EXTRACT_ENV}={value!r} is not a number of bytes") from None
        else:
            max_bytes = DEFAULT_MAX_EXTRACT_BYTES
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    return int(max_bytes)


# ------------------------------------------------------------------------------------ local disk errors


def _mb(n: Optional[float]) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"


def _free_bytes(folder: str) -> Optional[int]:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def _local_write_error(err: OSError, path: str, needed: Optional[int], written: int) -> DownloadError:
    """Turn an OSError raised while writing ``path`` into a message about the local disk."""
    folder = os.path.dirname(os.path.abspath(path))
    if _is_disk_full(err):
        what = "no space left on device" if err.errno == errno.ENOSPC else "no space left (disk quota exceeded)"
        free = _free_bytes(folder)
        need = (
            f"the file needs {_mb(needed)}"
            if needed
            else f"{_mb(written)} were written before the disk filled (the full size is unknown)"
        )
        return DiskFullError(
            f"{what} writing {path}: {_mb(free)} free, {need}. Free some space on that disk or point "
            f"${CACHE_ENV} (or the target folder) to a larger one."
        )
    if err.errno == errno.EFBIG:
        return DownloadError(f"file size limit exceeded writing {path} after {_mb(written)} (ulimit -f?): {err}")
    return DownloadError(f"cannot write {path}: {err}")


def _check_free_space(path: str, needed: Optional[int]) -> None:
    """Refuse at once (rather than after filling the disk) when ``needed`` bytes cannot fit."""
    if not needed:
        return
    free = _free_bytes(os.path.dirname(os.path.abspath(path)))
    if free is not None and free < needed:
        raise DiskFullError(
            f"no space left on device writing {path}: {_mb(free)} free, the file needs {_mb(needed)}. Free some "
            f"space on that disk or point ${CACHE_ENV} (or the target folder) to a larger one."
        )


def _write_chunk(out, chunk: bytes) -> None:
    """Write one downloaded chunk (a separate function so tests can make the disk fill up)."""
    out.write(chunk)


# ------------------------------------------------------------------------------------------ file lock

_HOST = socket.gethostname()
GUARD_NAME = ".mindcv-download.guard.lock"


def _proc_stat(pid: int) -> Optional[Tuple[str, int]]:
    """(state, start time in clock ticks since boot) of ``pid`` from /proc, or None where unavailable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        fields = data[data.rindex(b")") + 2 :].split()
        return fields[0].decode(), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int, proc_start: Optional[int] = None) -> bool:
    """Whether ``pid`` (on this host) is a running process; a zombie or a reused pid counts as dead."""
    if pid <= 0:
        return True  # unknown: assume alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # EPERM: it exists, it belongs to someone else
    info = _proc_stat(pid)
    if info is not None:
        state, start = info
        if state in ("Z", "X") or (proc_start is not None and start != proc_start):
            return False
    return True


def _redact(url: str) -> str:
    """``url`` without credentials, query or fragment (the lock file is readable by other users)."""
    parts = urlparse(url)
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


def _owner_record(what: str) -> bytes:
    own = _proc_stat(os.getpid())
    record = {"pid": os.getpid(), "host": _HOST, "since": time.time(), "proc_start": own and own[1], "what": what}
    return (json.dumps(record) + "\n").encode()


def _read_owner(path: str) -> Optional[dict]:
    try:
        with open(path, "rb") as f:
            owner = json.loads(f.read(4096).decode("utf-8", "replace") or "null")
        return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def _describe_owner(owner: Optional[dict]) -> str:
    if not owner:
        return "an unknown process (it has not written its name into the lock file)"
    since = owner.get("since")
    when = ""
    if isinstance(since, (int, float)):
        when = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))} ({time.time() - since:.0f} s ago)"
    what = f", {owner['what']}" if owner.get("what") else ""
    return f"pid {owner['pid']} on host {owner.get('host', '?')}{when}{what}"


def _owner_is_dead(owner: Optional[dict]) -> bool:
    return bool(owner) and owner.get("host") == _HOST and not _pid_alive(owner["pid"], owner.get("proc_start"))


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _flock_nb(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _guard_path(path: str) -> str:
    """One guard per folder (it is held for microseconds, so sharing it costs nothing)."""
    return os.path.join(os.path.dirname(os.path.abspath(path)), GUARD_NAME)


@contextmanager
def _guard(path: str, end: float, lock_path: str) -> Iterator[None]:
    """A short-lived lock serialising acquire-and-record and stale-lock breaking on ``lock_path``."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        while not _flock_nb(fd):  # held for microseconds by a live process (a dead one's is released)
            if time.monotonic() >= end:
                raise LockTimeoutError(f"timed out waiting for the guard {path} of the download lock {lock_path}")
            time.sleep(0.01)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def _file_lock(path: str, timeout: float = math.inf, what: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` across processes, waiting at most ``timeout`` seconds.

    The lock is a ``flock`` on ``path`` (the kernel drops it when its holder dies); while held, the file
    records the holder (pid, host, start, ``what``) so that a process that gives up can name it. A lock
    still held although its recorded holder is dead on this host (its descriptor was inherited by a
    forked child) is broken: the file is unlinked and a fresh one locked.

    Raises:
        LockTimeoutError: another process held the lock for more than ``timeout`` seconds.
    """
    start = time.monotonic()
    end = start + timeout
    guard = _guard_path(path)
    delay, told, owner = 0.05, False, None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        held = broke = False
        try:
            with _guard(guard, end, path):
                if _flock_nb(fd):
                    if _same_file(fd, path):
                        os.ftruncate(fd, 0)
                        os.pwrite(fd, _owner_record(what), 0)
                        held = True
                    else:  # the file was broken (unlinked) between our open and our flock: use the new one
                        fcntl.flock(fd, fcntl.LOCK_UN)
                        broke = True
                else:
                    owner = _read_owner(path)
                    if _owner_is_dead(owner) and _same_file(fd, path):
                        _logger.warning("breaking the stale lock %s of %s", path, _describe_owner(owner))
                        os.unlink(path)
                        broke = True
        finally:
            if not held:
                os.close(fd)
        if held:
            break
        if broke:
            continue
        now = time.monotonic()
        if now >= end:
            raise LockTimeoutError(
                f"gave up after waiting {now - start:.1f} s for the download lock {path}: it is held by "
                f"{_describe_owner(owner)}. If that process is stuck, stop it (or delete {path}); to wait longer "
                f"pass lock_timeout= or set ${LOCK_TIMEOUT_ENV}."
            )
        if not told and now - start > 5:
            _logger.info("waiting for the download lock %s held by %s", path, _describe_owner(owner))
            told = True
        time.sleep(min(delay, max(end - now, 0.0)))
        delay = min(delay * 1.5, 0.5)
    try:
        yield
    finally:
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# ------------------------------------------------------------------------------------------- fetching


class _Watchdog:
    """Shuts the download's sockets down when the deadline passes, waking any blocked connect or read."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._socks: List[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = None
        if math.isfinite(seconds):
            self._timer = threading.Timer(seconds, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def register(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._socks.append(sock)
            if self.expired:
                self._shutdown(sock)
        return sock

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        try:  # the plain socket call: on an SSL socket it wakes the reader without touching the SSL state
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._socks:
                self._shutdown(sock)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _build_opener(watchdog: _Watchdog) -> urllib.request.OpenerDirector:
    """urllib's opener (proxies, redirects, https, file://) whose HTTP connections the watchdog can stop."""

    def watched(base):
        class Connection(base):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self._create_connection = lambda *a, **k: watchdog.register(socket.create_connection(*a, **k))

            def connect(self):
                super().connect()
                watchdog.register(self.sock)  # for https: the TLS socket wrapping the registered one

        return Connection

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(watched(http.client.HTTPConnection), req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(watched(http.client.HTTPSConnection), req, context=self._context)

    return urllib.request.build_opener(HTTPHandler, HTTPSHandler)


def _hint(final: str) -> str:
    return f"Download the file on a connected machine and put it at '{final}', " "or pass checkpoint_path=<local file>."


def _deadline_error(url: str, deadline: float, received: int, total: Optional[int], final: str):
    of = f" of {total}" if total else ""
    return DownloadTimeoutError(
        f"download of {url} did not finish within its deadline of {deadline:g} s ({received}{of} bytes "
        f"received): the server is stalled or too slow. Pass a longer deadline= (or set ${DEADLINE_ENV}). "
        + _hint(final)
    )


def _network_error(url: str, err: BaseException, timeout: float, final: str) -> DownloadError:
    reason = getattr(err, "reason", err)
    if urlparse(url).scheme == "file":
        return DownloadError(f"could not read {url}: {reason}")
    if isinstance(reason, socket.gaierror):
        what = f"cannot resolve the host name ({reason})"
    elif isinstance(reason, ConnectionRefusedError):
        what = f"cannot connect: connection refused ({reason})"
    elif isinstance(reason, (socket.timeout, TimeoutError)):
        what = f"cannot connect: no answer within {timeout:g} s ({reason})"
    elif isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN):
        what = f"cannot connect: network unreachable ({reason})"
    elif isinstance(reason, ssl.SSLError):
        what = f"TLS error ({reason})"
    else:
        what = f"cannot connect ({reason})"
    return NetworkError(f"could not download {url}: {what}. No network access? {_hint(final)}")


def _http_error(url: str, err: urllib.error.HTTPError) -> HTTPStatusError:
    code = err.code
    why = ""
    if code in (404, 410):
        why = " (no file at that address)"
    elif code >= 500:
        why = " (a server error; try again later)"
    return HTTPStatusError(f"could not download {url}: HTTP {code} {err.reason}{why}", url, code)


def _fetch(url: str, dst: str, progress: bool, timeout: float, deadline: float, final: str) -> None:
    """Download ``url`` into the (temporary) file ``dst`` within ``deadline`` seconds overall."""
    watchdog = _Watchdog(deadline)
    received, total = 0, None
    try:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        try:
            response = _build_opener(watchdog).open(request, timeout=min(timeout, deadline))
        except urllib.error.HTTPError as err:
            err.close()
            raise _http_error(url, err) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            if watchdog.expired:
                raise _deadline_error(url, deadline, 0, None, final) from err
            raise _network_error(url, err, timeout, final) from err
        with response:
            try:
                total = int(response.headers.get("Content-Length") or 0) or None
            except ValueError:
                total = None
            _check_free_space(final, total)
            read = getattr(response, "read1", response.read)  # read1: returns what has arrived, never waits for more
            try:
                desc = os.path.basename(final)
                with (
                    open(dst, "wb") as out,
                    progress_bar(total=total, unit="B", unit_scale=True, desc=desc, disable=not progress) as bar,
                ):
                    while True:
                        if watchdog.expired:
                            raise _deadline_error(url, deadline, received, total, final)
                        try:
                            chunk = read(_CHUNK)
                        except (OSError, http.client.HTTPException) as err:
                            if watchdog.expired:
                                raise _deadline_error(url, deadline, received, total, final) from err
                            raise NetworkError(
                                f"could not download {url}: the connection broke after {received} bytes ({err!r}). "
                                f"No network access? {_hint(final)}"
                            ) from err
                        if not chunk:
                            break
                        _write_chunk(out, chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                    out.flush()
                    os.fsync(out.fileno())
            except OSError as err:  # network errors were turned into DownloadError above: this is the local disk
                raise _local_write_error(err, final, total, received) from err
        if watchdog.expired and received != total:  # the EOF may be the watchdog's shutdown
            raise _deadline_error(url, deadline, received, total, final)
        if total is not None and received != total:
            raise NetworkError(f"download of {url} ended early ({received} of {total} bytes). {_hint(final)}")
    finally:
        watchdog.cancel()


def _download_atomic(
    url: str,
    dst: str,
    progress: bool,
    timeout: float,
    deadline: float,
    check: Optional[Callable[[str], Optional[str]]] = None,
) -> None:
    """Download into a temporary file beside ``dst``, check it, rename it into place; never a partial ``dst``."""
    # '<name>.<random>.part' rather than TMP_PREFIX: a user looking into the cache sees which download it is
    with atomic_path(
        dst, ".part", prefix=os.path.basename(dst) + ".", error=lambda err: _local_write_error(err, dst, None, 0)
    ) as tmp:
        _logger.info("downloading %s to %s", url, dst)
        _fetch(url, tmp, progress, timeout, deadline, final=dst)
        problem = check(tmp) if check else None
        if problem:
            raise DownloadError(f"{url}: {problem}")


def download_cached(
    url: str,
    sha256: str = "",
    hash_prefix: str = "",
    subdir: str = "checkpoints",
    filename: Optional[str] = None,
    cache_dir: Optional[str] = None,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    md5: str = "",
    deadline: Optional[float] = None,
    lock_timeout: Optional[float] = None,
) -> str:
    """Return the cached copy of ``url``, downloading it once if needed.

    Args:
        url: ``http(s)://`` or ``file://`` address.
        sha256: the full expected sha256 (preferred when known).
        hash_prefix: the expected leading hex digits of the sha256 (as published in file names).
        subdir: folder under the cache root.
        filename: file name in the cache (defaults to the URL's last path component).
        cache_dir: cache root (defaults to :func:`get_cache_dir`).
        progress: show a progress bar.
        timeout: seconds to wait for a connection or for any data (per read).
        md5: the expected md5 (checked like ``sha256``; a cached file that fails it is downloaded again).
        deadline: seconds for the whole download (default ``$MINDCV_DOWNLOAD_DEADLINE`` or 3600;
            ``math.inf`` for none).
        lock_timeout: seconds to wait while another process downloads the same file (default
            ``$MINDCV_LOCK_TIMEOUT`` or ``deadline`` + 300).

    Returns:
        The local path.

    Raises:
        NetworkError: no network (name resolution, connection refused or unreachable, broken connection).
        HTTPStatusError: the server answered 4xx/5xx.
        DownloadTimeoutError: the download did not finish within ``deadline``.
        DiskFullError: no space left for the file.
        LockTimeoutError: another process held the lock for more than ``lock_timeout``.
        DownloadError: a hash mismatch, or another local error (the base class of all the above).
    """
    deadline = _resolve_deadline(deadline)
    lock_timeout = _resolve_lock_timeout(lock_timeout, deadline)
    folder = os.path.join(cache_dir or get_cache_dir(), subdir)
    filename = filename or os.path.basename(urlparse(url).path)
    if not filename:
        raise DownloadError(f"cannot derive a file name from URL {url!r}")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise _local_write_error(err, os.path.join(folder, filename), None, 0) from err
    dst = os.path.join(folder, filename)
    with _file_lock(dst + ".lock", timeout=lock_timeout, what=f"downloading {_redact(url)}"):
        if os.path.exists(dst):
            problem = _hash_problem(dst, sha256, hash_prefix, md5)
            if problem is None:
                return dst
            _logger.warning("cached %s: %s; downloading it again", dst, problem)
        _download_atomic(url, dst, progress, timeout, deadline, lambda p: _hash_problem(p, sha256, hash_prefix, md5))
    return dst


# ----------------------------------------------------------------------------------------- extraction

_SEP = re.compile(r"[/\\]")
_DRIVE = re.compile(r"^[A-Za-z]:")
_MAX_LINK_HOPS = 40
_MAX_LINK_TARGET = 4096


def _detect(path: str) -> Tuple[Optional[str], Optional[str]]:
    """(archive kind 'tar' / 'zip' / None, compression 'gz' / 'bz2' / 'xz' / None) from the name, else the bytes."""
    name = os.path.basename(path).lower()
    table = (
        ((".tar.gz", ".tgz"), ("tar", "gz")),
        ((".tar.bz2", ".tbz", ".tbz2"), ("tar", "bz2")),
        ((".tar.xz", ".txz"), ("tar", "xz")),
        ((".tar",), ("tar", None)),
        ((".zip",), ("zip", None)),
        ((".gz",), (None, "gz")),
        ((".bz2",), (None, "bz2")),
        ((".xz",), (None, "xz")),
    )
    for suffixes, kind in table:
        if name.endswith(suffixes):
            return kind
    if zipfile.is_zipfile(path):
        return "zip", None
    if tarfile.is_tarfile(path):
        return "tar", None
    raise DownloadError(f"cannot tell the archive type of '{path}' (expected .zip, .tar[.gz|.bz2|.xz], .gz, .bz2, .xz)")


def _name_parts(archive: str, name: str) -> List[str]:
    """The components of a member name, refusing absolute names and '..'."""
    if "\x00" in name:
        raise UnsafeArchiveError(archive, name, "has a NUL byte in its name")
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise UnsafeArchiveError(archive, name, "has an absolute path")
    parts = [p for p in _SEP.split(name) if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(archive, name, "has a '..' component (it would land outside the target folder)")
    return parts


def _key(parts: List[str]) -> str:
    return "/".join(parts).casefold()  # casefolded: conservative on case-insensitive file systems


def _link_escapes(base: List[str], target: str, links: Dict[str, str]) -> bool:
    """Whether ``target`` (a symlink's text, relative to the folder ``base``) resolves outside the root,
    following the archive's own symlinks component by component as the kernel would."""
    if not target or target.startswith(("/", "\\")) or _DRIVE.match(target):
        return True
    stack = list(base)
    queue = deque(_SEP.split(target))
    hops = 0
    while queue:
        part = queue.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return True
            stack.pop()
            continue
        stack.append(part)
        linked = links.get(_key(stack))
        if linked is not None:
            hops += 1
            if hops > _MAX_LINK_HOPS or not linked or linked.startswith(("/", "\\")) or _DRIVE.match(linked):
                return True
            stack.pop()
            queue.extendleft(reversed(_SEP.split(linked)))
    return False


class _Entry:
    __slots__ = ("name", "parts", "kind", "size", "link")

    def __init__(self, name: str, parts: List[str], kind: str, size: int = 0, link: str = ""):
        self.name, self.parts, self.kind, self.size, self.link = name, parts, kind, size, link


def _check_entries(archive: str, entries: List[_Entry], max_bytes: int, to_path: str) -> None:
    """Refuse the archive unless every member stays inside the target (see the module docstring)."""
    links: Dict[str, str] = {}
    others = set()
    for e in entries:
        key = _key(e.parts)
        if e.kind == "symlink":
            if key in links or key in others:
                raise UnsafeArchiveError(archive, e.name, "is a symbolic link that shares its name with another member")
            if not e.parts:
                raise UnsafeArchiveError(archive, e.name, "is a symbolic link in place of the target folder itself")
            links[key] = e.link
        else:
            if key in links:
                raise UnsafeArchiveError(archive, e.name, "shares its name with a symbolic link of the archive")
            others.add(key)
    total = 0
    files = set()
    for e in entries:
        for i in range(1, len(e.parts)):
            if _key(e.parts[:i]) in links:
                raise UnsafeArchiveError(
                    archive, e.name, f"would be written through the symbolic link {'/'.join(e.parts[:i])!r}"
                )
        if e.kind == "file":
            total += e.size
            files.add(_key(e.parts))
        elif e.kind == "dir":
            continue
        elif e.kind == "symlink":
            if _link_escapes(e.parts[:-1], e.link, links):
                raise UnsafeArchiveError(
                    archive, e.name, f"is a symbolic link to {e.link!r}, which points outside the target folder"
                )
        elif e.kind == "hardlink":
            if not e.link or e.link.startswith(("/", "\\")) or _DRIVE.match(e.link):
                raise UnsafeArchiveError(archive, e.name, f"is a hard link to the absolute path {e.link!r}")
            target = [p for p in _SEP.split(e.link) if p not in ("", ".")]
            if ".." in target or _key(target) not in files:
                raise UnsafeArchiveError(
                    archive, e.name, f"is a hard link to {e.link!r}, which is not a file stored earlier in the archive"
                )
            files.add(_key(e.parts))
        if not e.parts and e.kind != "dir":
            raise UnsafeArchiveError(archive, e.name, "would replace the target folder itself")
    if total > max_bytes:
        raise UnsafeArchiveError(
            archive,
            "(all members)",
            f"unpacks to {total} bytes, more than the limit of {max_bytes} (a zip bomb?); pass max_bytes= or "
            f"set ${MAX_EXTRACT_ENV} to allow it",
        )
    _check_free_space(to_path, total)


def _tar_entries(archive: str, tar: tarfile.TarFile) -> Tuple[List[_Entry], List[tarfile.TarInfo]]:
    entries, members = [], []
    for m in tar.getmembers():
        parts = _name_parts(archive, m.name)
        if m.isreg():
            entry = _Entry(m.name, parts, "file", m.size)
        elif m.isdir():
            entry = _Entry(m.name, parts, "dir")
        elif m.issym():
            entry = _Entry(m.name, parts, "symlink", link=m.linkname)
        elif m.islnk():
            entry = _Entry(m.name, parts, "hardlink", link=m.linkname)
        elif m.ischr() or m.isblk():
            raise UnsafeArchiveError(archive, m.name, "is a device file")
        elif m.isfifo():
            raise UnsafeArchiveError(archive, m.name, "is a FIFO (named pipe)")
        else:
            raise UnsafeArchiveError(archive, m.name, f"has the unsupported tar type {m.type!r}")
        entries.append(entry)
        members.append(m)
    return entries, members


def _zip_entries(archive: str, zf: zipfile.ZipFile) -> List[Tuple[_Entry, zipfile.ZipInfo]]:
    out = []
    for info in zf.infolist():
        parts = _name_parts(archive, info.filename)
        mode = info.external_attr >> 16
        fmt = stat.S_IFMT(mode)
        if stat.S_ISLNK(mode):
            if info.file_size > _MAX_LINK_TARGET:
                raise UnsafeArchiveError(archive, info.filename, "is a symbolic link with an over-long target")
            link = zf.read(info).decode("utf-8", "surrogateescape")
            entry = _Entry(info.filename, parts, "symlink", link=link)
        elif info.is_dir() or stat.S_ISDIR(mode):
            entry = _Entry(info.filename, parts, "dir")
        elif fmt in (0, stat.S_IFREG):
            entry = _Entry(info.filename, parts, "file", info.file_size)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            raise UnsafeArchiveError(archive, info.filename, "is a device file")
        else:
            raise UnsafeArchiveError(archive, info.filename, f"is a special file (mode {mode:o})")
        out.append((entry, info))
    return out


def _inside(path: str, root: str) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base + os.sep)


def _unpack_zip(archive: str, zf: zipfile.ZipFile, items, tmp: str, max_bytes: int) -> None:
    total = 0
    for entry, info in items:
        path = os.path.join(tmp, *entry.parts) if entry.parts else tmp
        if not _inside(os.path.dirname(path), tmp):  # cannot happen after the checks: a second line of defence
            raise UnsafeArchiveError(archive, entry.name, "would be written outside the target folder")
        if entry.kind == "dir":
            os.makedirs(path, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if entry.kind == "symlink":
            os.symlink(entry.link, path)
            continue
        written = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "wb") as out, zf.open(info) as src:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                written += len(chunk)
                total += len(chunk)
                if written > info.file_size or total > max_bytes:
                    raise UnsafeArchiveError(
                        archive,
                        entry.name,
                        f"unpacks to more bytes than its header says or than the limit of {max_bytes} (a zip bomb?)",
                    )
                out.write(chunk)


def _stale_tmp_dirs(parent: str, prefix: str) -> None:
    """Remove temporary extraction folders left by killed processes of this host."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix) :]  # "<pid>.<host>.<random>"
        pid, _, tail = rest.partition(".")
        host = tail.rpartition(".")[0]
        if pid.isdigit() and host == _HOST and not _pid_alive(int(pid)):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _is_real_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


def _conflicts(src: str, dst: str, found: List[str]) -> None:
    for name in os.listdir(src):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if not os.path.lexists(d):
            continue
        if _is_real_dir(s):
            if os.path.isdir(d):
                _conflicts(s, d, found)
            else:
                found.append(d)
        elif os.path.isdir(d):
            found.append(d)


def _move(src: str, dst: str) -> None:
    try:
        os.replace(src, dst)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        shutil.move(src, dst)


def _merge(src: str, dst: str) -> None:
    for name in os.listdir(src):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if not os.path.lexists(d):
            _move(s, d)  # a new entry appears at once
        elif _is_real_dir(s):
            _merge(s, d)
        else:
            _move(s, d)


def _extract_atomically(archive: str, to_path: str, unpack: Callable[[str], None]) -> str:
    """Run ``unpack(tmp)`` on a fresh temporary folder beside ``to_path`` and move the result into place."""
    to_path = os.path.abspath(to_path)
    exists = os.path.isdir(to_path)
    if os.path.lexists(to_path) and not exists:
        raise DownloadError(f"cannot extract '{archive}' into '{to_path}': it exists and is not a folder")
    parent = to_path if exists else os.path.dirname(to_path)
    prefix = f".{os.path.basename(archive)}.extracting."
    try:
        os.makedirs(parent, exist_ok=True)
        _stale_tmp_dirs(parent, prefix)
        tmp = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}.{_HOST}.", dir=parent)
    except OSError as err:
        raise _local_write_error(err, to_path, None, 0) from err
    try:
        try:
            unpack(tmp)
            os.chmod(tmp, 0o777 & ~current_umask())
            if exists or os.path.lexists(to_path):
                found: List[str] = []
                _conflicts(tmp, to_path, found)
                if found:
                    raise DownloadError(
                        f"cannot extract '{archive}' into '{to_path}': {', '.join(found[:3])} "
                        f"{'is' if len(found) == 1 else 'are'} in the way (a file where the archive has a folder, "
                        "or the reverse); nothing was changed"
                    )
                _merge(tmp, to_path)
            else:
                try:
                    os.rename(tmp, to_path)  # the whole folder appears at once
                except OSError as err:
                    if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    _merge(tmp, to_path)  # another process created it meanwhile
        except OSError as err:
            if _is_disk_full(err):
                raise _local_write_error(err, to_path, None, 0) from err
            raise DownloadError(f"cannot extract '{archive}' into '{to_path}': {err}") from err
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return to_path


_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile, ValueError)


def _corrupt(archive: str, err: BaseException) -> DownloadError:
    return DownloadError(f"cannot read archive '{archive}': {err} (a truncated or corrupt download?)")


def _extract_tar(from_path: str, to_path: str, max_bytes: Optional[int] = None) -> str:
    max_bytes = _resolve_max_bytes(max_bytes)

    def unpack(tmp: str) -> None:
        try:
            with tarfile.open(from_path, "r:*") as tar:
                entries, members = _tar_entries(from_path, tar)
                _check_entries(from_path, entries, max_bytes, to_path)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=members, filter="data")
                else:  # Python < 3.11.4 / 3.10.12 / 3.9.17: the checks above did the rest of the filter's work
                    for m in members:
                        m.mode = (m.mode & 0o755) | (0o700 if m.isdir() else 0o600)
                        m.uid, m.gid, m.uname, m.gname = os.getuid(), os.getgid(), "", ""
                    tar.extractall(tmp, members=members)
        except _CORRUPT as err:
            if isinstance(err, tarfile.FilterError):  # the checks above refuse these first: a second line of defence
                why = f"was refused by tarfile's data filter ({err})"
                raise UnsafeArchiveError(from_path, err.tarinfo.name, why) from err
            raise _corrupt(from_path, err) from err

    return _extract_atomically(from_path, to_path, unpack)


def _extract_zip(from_path: str, to_path: str, max_bytes: Optional[int] = None) -> str:
    max_bytes = _resolve_max_bytes(max_bytes)

    def unpack(tmp: str) -> None:
        try:
            with zipfile.ZipFile(from_path) as zf:
                items = _zip_entries(from_path, zf)
                _check_entries(from_path, [e for e, _ in items], max_bytes, to_path)
                _unpack_zip(from_path, zf, items, tmp, max_bytes)
        except (*_CORRUPT, RuntimeError, NotImplementedError) as err:
            if isinstance(err, DownloadError):
                raise
            raise _corrupt(from_path, err) from err  # RuntimeError: an encrypted member

    return _extract_atomically(from_path, to_path, unpack)


def _decompress(from_path: str, compression: str, to_path: Optional[str], max_bytes: Optional[int] = None) -> str:
    """Decompress a single ``.gz`` / ``.bz2`` / ``.xz`` file into ``to_path`` (a folder, default: beside it)."""
    max_bytes = _resolve_max_bytes(max_bytes)
    name = os.path.basename(from_path)
    name = name[: -len(compression) - 1] if name.lower().endswith("." + compression) else name + ".out"
    folder = to_path or os.path.dirname(os.path.abspath(from_path))
    dst = os.path.join(folder, name)
    opener = {"gz": gzip.open, "bz2": bz2.open, "xz": lzma.open}[compression]
    os.makedirs(folder, exist_ok=True)
    written = 0
    with atomic_path(
        dst, ".part", prefix=name + ".", error=lambda err: _local_write_error(err, dst, None, written)
    ) as tmp:
        try:
            with open(tmp, "wb") as out, opener(from_path, "rb") as src:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    written += len(chunk)
                    if written > max_bytes:
                        raise UnsafeArchiveError(
                            from_path, name, f"decompresses to more than the limit of {max_bytes} bytes (a bomb?)"
                        )
                    out.write(chunk)
        except _CORRUPT + (OSError,) as err:  # gzip.BadGzipFile is an OSError without an errno
            if isinstance(err, OSError) and err.errno is not None:
                raise _local_write_error(err, dst, None, written) from err
            raise _corrupt(from_path, err) from err
    return dst


def extract_archive(from_path: str, to_path: Optional[str] = None, max_bytes: Optional[int] = None) -> str:
    """Safely extract ``from_path`` (zip, tar, tar.gz/tgz, tar.bz2/tbz, tar.xz/txz) into ``to_path``.

    A plain ``.gz`` / ``.bz2`` / ``.xz`` file is decompressed into ``to_path`` (default: beside it).

    Args:
        from_path: the archive.
        to_path: the target folder (default: the archive's folder); created if needed.
        max_bytes: refuse archives that unpack to more (default ``$MINDCV_MAX_EXTRACT_BYTES`` or 64 GiB).

    Returns:
        ``to_path`` for an archive, the decompressed file for a single compressed file.

    Raises:
        UnsafeArchiveError: a member would land outside ``to_path``, is a special file, or the archive is
            too big; nothing is extracted.
        DiskFullError: the disk cannot hold the extracted files; nothing is left behind.
        DownloadError: the archive is corrupt or of an unknown type.
    """
    kind, compression = _detect(from_path)
    if kind is None:
        return _decompress(from_path, compression, to_path, max_bytes)
    to_path = to_path or os.path.dirname(os.path.abspath(from_path))
    return (_extract_tar if kind == "tar" else _extract_zip)(from_path, to_path, max_bytes)


# ------------------------------------------------------------------------------------- upstream class


class DownLoad:
    """Upstream mindcv's download helper: verified, locked, atomic downloads and safe extraction.

    Args:
        timeout: seconds to wait for a connection or any data (per read).
        deadline: seconds for a whole file (default ``$MINDCV_DOWNLOAD_DEADLINE`` or 3600).
        lock_timeout: seconds to wait while another process downloads the same file.
        max_extract_bytes: refuse archives that unpack to more (default 64 GiB).
        progress: show progress bars.
    """

    USER_AGENT: str = USER_AGENT

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        deadline: Optional[float] = None,
        lock_timeout: Optional[float] = None,
        max_extract_bytes: Optional[int] = None,
        progress: bool = True,
    ):
        self.timeout = timeout
        self.deadline = deadline
        self.lock_timeout = lock_timeout
        self.max_extract_bytes = max_extract_bytes
        self.progress = progress

    @staticmethod
    def calculate_md5(file_path: str, chunk_size: int = 1024 * 1024) -> str:
        """Hex md5 of a file."""
        return _file_digest(file_path, "md5", chunk_size)

    def check_md5(self, file_path: str, md5: Optional[str] = None) -> bool:
        """Whether the file's md5 is ``md5``."""
        return md5 is not None and md5.lower() == self.calculate_md5(file_path)

    @staticmethod
    def extract_tar(
        from_path: str,
        to_path: Optional[str] = None,
        compression: Optional[str] = None,
        max_bytes: Optional[int] = None,
    ) -> str:
        """Safely extract a tar file (any compression; ``compression`` is accepted for upstream compatibility)."""
        return _extract_tar(from_path, to_path or os.path.dirname(os.path.abspath(from_path)), max_bytes)

    @staticmethod
    def extract_zip(
        from_path: str,
        to_path: Optional[str] = None,
        compression: Optional[str] = None,
        max_bytes: Optional[int] = None,
    ) -> str:
        """Safely extract a zip file (``compression`` is accepted for upstream compatibility)."""
        return _extract_zip(from_path, to_path or os.path.dirname(os.path.abspath(from_path)), max_bytes)

    def extract_archive(self, from_path: str, to_path: Optional[str] = None) -> str:
        """Safely extract an archive (see :func:`extract_archive`); returns the target folder or file."""
        return extract_archive(from_path, to_path, self.max_extract_bytes)

    def download_file(self, url: str, file_path: str, chunk_size: int = 1024) -> None:
        """Download ``url`` to ``file_path`` (atomically, within the deadline; no cache, no lock).

        ``chunk_size`` is accepted for upstream compatibility; reads take what has arrived, up to 64 KiB.
        """
        deadline = _resolve_deadline(self.deadline)
        _download_atomic(url, file_path, self.progress, self.timeout, deadline)

    def download_url(
        self, url: str, path: Optional[str] = None, filename: Optional[str] = None, md5: Optional[str] = None
    ) -> str:
        """Download ``url`` into ``path`` (default: the cache root) once; ``md5`` is checked when given."""
        path = os.path.expanduser(path or get_default_download_root())
        return download_cached(
            url,
            subdir="",
            filename=filename,
            cache_dir=path,
            progress=self.progress,
            timeout=self.timeout,
            md5=md5 or "",
            deadline=self.deadline,
            lock_timeout=self.lock_timeout,
        )

    def download_and_extract_archive(
        self,
        url: str,
        download_path: Optional[str] = None,
        extract_path: Optional[str] = None,
        filename: Optional[str] = None,
        md5: Optional[str] = None,
        remove_finished: bool = False,
    ) -> str:
        """Download an archive and extract it safely (zip, tar, tar.gz, tgz, tar.bz2, tar.xz)."""
        archive = self.download_url(url, download_path, filename, md5)
        extract_path = extract_path or os.path.dirname(archive)
        result = self.extract_archive(archive, extract_path)
        if remove_finished:
            os.remove(archive)
        return result
