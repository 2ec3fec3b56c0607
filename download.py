"""HTTP downloads shared by the dataset and pretrained-weight fetchers.

    python -c "from download import fetch; fetch('http://127.0.0.1:8000/maps.tar.gz', 'maps.tar.gz')"

One file, resumed with HTTP Range where the server allows it, written to DEST.part and renamed into
place only when complete. Errors that retrying cannot fix (a host that does not resolve, HTTP 4xx)
fail at once; transient ones are retried with backoff, each retry announced with its reason, and the
total wait is bounded.
"""
import hashlib
import http.client
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from utils import InputError


class DownloadError(InputError):
    """A download failed; the message names the URL and the reason."""


def permanent(error: Exception) -> bool:
    """Errors that no retry can fix: the name does not resolve, or the server refuses (HTTP 4xx)."""
    if isinstance(error, urllib.error.HTTPError):
        return error.code not in (408, 429) and error.code < 500
    reason = getattr(error, "reason", error)
    return isinstance(reason, socket.gaierror) or isinstance(error, ValueError)


def describe(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    reason = getattr(error, "reason", error)
    if isinstance(reason, socket.gaierror):
        return f"host not found ({reason.strerror or reason})"
    return str(reason) or type(reason).__name__


def fetch(url: str, dest, timeout=20.0, retries=5, backoff=1.0, max_wait=120.0) -> Path:
    """Download url to dest with a progress bar. A partial DEST.part is resumed with HTTP Range
    (started over where the server ignores it). Transient failures are retried up to `retries` times,
    sleeping backoff * 2**attempt, and never once more than max_wait seconds of retrying have passed;
    `timeout` bounds every connect and read, so a server that never answers cannot hang us."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    first_failure = None
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                if have and getattr(r, "status", 200) != 206:
                    have = 0  # the server sent the whole file: start the part file over
                length = r.headers.get("Content-Length")
                total = have + int(length) if length else None
                with open(part, "ab" if have else "wb") as f, tqdm(
                        total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                    while chunk := r.read(1 << 20):
                        f.write(chunk)
                        bar.update(len(chunk))
                    f.flush()
                    os.fsync(f.fileno())
            if total is not None and part.stat().st_size != total:
                raise ConnectionError(f"got {part.stat().st_size} of {total} bytes")
            os.replace(part, dest)
            return dest
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError,
                ValueError) as e:
            if isinstance(e, urllib.error.HTTPError) and e.code == 416:
                part.unlink(missing_ok=True)  # our part file is no prefix of theirs: start over
            elif permanent(e):
                raise DownloadError(f"{url}: {describe(e)}") from None
            reason = describe(e)
        first_failure = first_failure or time.monotonic()
        delay = backoff * 2 ** attempt
        if attempt == retries or time.monotonic() - first_failure + delay > max_wait:
            break
        print(f"{url}: {reason}; retry {attempt + 1} of {retries} in {delay:.3g} s", file=sys.stderr)
        time.sleep(delay)
    raise DownloadError(f"{url}: download failed after {attempt + 1} tries ({reason})")


def sha256sum(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
