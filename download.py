"""HTTP downloads shared by the dataset and pretrained-weight fetchers.

    python -c "from download import fetch; fetch('http://127.0.0.1:8000/maps.tar.gz', 'maps.tar.gz')"

One file, resumed with HTTP Range where the server allows it, written to DEST.part and renamed into
place only when complete. Errors that retrying cannot fix (a host that does not resolve, HTTP 4xx)
fail at once; transient ones are retried with backoff, each retry announced with its reason, and the
total wait is bounded; a server that accepts the connection and then sends nothing is given up on
after two tries.
"""
import hashlib
import http.client
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from cli import InputError
from durable import replace_durably


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
    a try that brings the file further starts that budget over. `timeout` bounds every connect and
    read, and a server that sends nothing within it on two tries in a row is given up on."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tries, failures, silent, furthest, first_failure = 0, 0, 0, 0, None
    while True:
        tries += 1
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        got, timed_out = 0, False
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
                        got += len(chunk)
                        bar.update(len(chunk))
            if total is not None and part.stat().st_size != total:
                raise ConnectionError(f"got {part.stat().st_size} of {total} bytes")
            replace_durably(part, dest)
            return dest
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError,
                ValueError) as e:
            if isinstance(e, urllib.error.HTTPError) and e.code == 416:
                part.unlink(missing_ok=True)  # our part file is no prefix of theirs: start over
            elif permanent(e):
                raise DownloadError(f"{url}: {describe(e)}") from None
            reason = describe(e)
            timed_out = isinstance(getattr(e, "reason", e), TimeoutError)
        if have + got > furthest:  # the file came further: a flaky but working server gets a new budget
            furthest, failures, first_failure = have + got, 0, None
        silent = silent + 1 if timed_out and not got else 0
        if silent == 2:
            raise DownloadError(f"{url}: the server sent nothing within {timeout:g} s on two tries in a row "
                                f"({reason}); giving up")
        first_failure = first_failure or time.monotonic()
        delay = backoff * 2 ** failures
        if failures == retries or time.monotonic() - first_failure + delay > max_wait:
            raise DownloadError(f"{url}: download failed after {tries} tries ({reason})")
        failures += 1
        print(f"{url}: {reason}; retry {failures} of {retries} in {delay:.3g} s", file=sys.stderr)
        time.sleep(delay)


def sha256sum(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
