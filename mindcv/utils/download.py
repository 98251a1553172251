"""Downloads into a shared cache, verified by sha256, safe when many processes start at once.

The cache is ``~/.cache/mindcv`` unless ``MINDCV_HOME`` is set. When eight training processes ask for
the same weights together, one downloads (to a temporary file, renamed into place once its hash checks
out) while the others wait on a file lock and then reuse the file: nobody ever reads a partial file.
"""

import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import Iterator, Optional
from urllib.parse import urlparse

from tqdm import tqdm

__all__ = [
    "CACHE_ENV",
    "DownloadError",
    "get_cache_dir",
    "file_sha256",
    "download_cached",
    "get_default_download_root",
    "set_default_download_root",
    "DownLoad",
]

_logger = logging.getLogger(__name__)
CACHE_ENV = "MINDCV_HOME"
_default_download_root: Optional[str] = None


class DownloadError(RuntimeError):
    """A download failed or its content does not match the published hash."""


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


def file_sha256(path: str, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_ok(path: str, sha256: str, hash_prefix: str) -> bool:
    if not (sha256 or hash_prefix):
        return True
    actual = file_sha256(path)
    return actual == sha256 if sha256 else actual.startswith(hash_prefix.lower())


@contextmanager
def _file_lock(path: str) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fetch(url: str, dst: str, progress: bool, timeout: float, final: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with (
                open(dst, "wb") as out,
                tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(final), disable=not progress) as bar,
            ):
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
            if total is not None and os.path.getsize(dst) != total:
                raise DownloadError(f"download of {url} ended early ({os.path.getsize(dst)} of {total} bytes)")
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(
            f"could not download {url}: {reason}. No network access? Download the file on a connected machine "
            f"and put it at '{final}', or pass checkpoint_path=<local file>."
        ) from err


def download_cached(
    url: str,
    sha256: str = "",
    hash_prefix: str = "",
    subdir: str = "checkpoints",
    filename: Optional[str] = None,
    cache_dir: Optional[str] = None,
    progress: bool = True,
    timeout: float = 60.0,
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
        timeout: socket timeout in seconds.

    Returns:
        The local path.

    Raises:
        DownloadError: no network, an HTTP error, a short read, or a hash mismatch.
    """
    folder = os.path.join(cache_dir or get_cache_dir(), subdir)
    os.makedirs(folder, exist_ok=True)
    filename = filename or os.path.basename(urlparse(url).path)
    if not filename:
        raise DownloadError(f"cannot derive a file name from URL {url!r}")
    dst = os.path.join(folder, filename)
    with _file_lock(dst + ".lock"):
        if os.path.exists(dst):
            if _hash_ok(dst, sha256, hash_prefix):
                return dst
            _logger.warning("cached %s does not match its published hash; downloading it again", dst)
        fd, tmp = tempfile.mkstemp(prefix=filename + ".", suffix=".part", dir=folder)
        os.close(fd)
        try:
            _logger.info("downloading %s to %s", url, dst)
            _fetch(url, tmp, progress, timeout, final=dst)
            if not _hash_ok(tmp, sha256, hash_prefix):
                expected = sha256 or hash_prefix + "..."
                raise DownloadError(f"{url}: sha256 {file_sha256(tmp)} does not match the published {expected}")
            os.replace(tmp, dst)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return dst


class DownLoad:
    """Upstream mindcv's download helper, backed by :func:`download_cached` (verified, locked, atomic)."""

    def download_url(
        self, url: str, path: Optional[str] = None, filename: Optional[str] = None, md5: Optional[str] = None
    ) -> str:
        """Download ``url`` into ``path`` (default: the cache root); ``md5`` is checked when given."""
        path = path or get_default_download_root()
        dst = download_cached(url, subdir="", filename=filename, cache_dir=path)
        if md5 is not None:
            digest = hashlib.md5()
            with open(dst, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            if digest.hexdigest() != md5:
                os.remove(dst)
                raise DownloadError(f"{url}: md5 {digest.hexdigest()} does not match {md5}")
        return dst

    def download_and_extract_archive(
        self,
        url: str,
        download_path: Optional[str] = None,
        extract_path: Optional[str] = None,
        filename: Optional[str] = None,
        md5: Optional[str] = None,
        remove_finished: bool = False,
    ) -> str:
        """Download an archive and unpack it (zip, tar, tar.gz, tgz, tar.bz2)."""
        archive = self.download_url(url, download_path, filename, md5)
        extract_path = extract_path or os.path.dirname(archive)
        shutil.unpack_archive(archive, extract_path)
        if remove_finished:
            os.remove(archive)
        return extract_path
