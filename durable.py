"""Files written so that a crash, a signal or a full disk never leaves a torn one (no torch here).

atomic_write: into a temp file beside the target, fsync, rename, fsync the folder; made_folder: a
folder that disappears again if nothing was written into it.
"""
import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def umask() -> int:
    """The process's umask (reading it means setting it; the strictest mask stands in meanwhile)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def ordinary_mode(path, folder=False):
    """Give a file made by tempfile (0600, folders 0700) the mode an ordinary open() or mkdir() would
    have given it, so that teammates the umask admits can read what we write."""
    os.chmod(path, (0o777 if folder else 0o666) & ~umask())


def atomic_write(path, write, mode="wb"):
    """write(f) into a temp file in path's folder, then replace_durably: a crash at any instant
    leaves either the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        ordinary_mode(tmp)
        with os.fdopen(fd, mode) as f:
            write(f)
        replace_durably(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_durably(tmp, path):
    """Put the finished file tmp in path's place: its bytes on disk first (fsync), then the rename,
    then the rename itself (fsync of the folder). After a crash or power loss, path is the old file
    or the whole new one."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    try:
        dir_fd = os.open(Path(path).parent, os.O_RDONLY)
    except OSError:  # a folder that cannot be opened (Windows) cannot be synced either
        return
    try:
        os.fsync(dir_fd)
    except OSError as e:  # some network and FUSE file systems cannot sync a folder; the file is in place
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(dir_fd)


@contextmanager
def made_folder(folder):
    """Create folder (and its missing parents) for the block; on leaving it, remove those it created
    that stayed empty, so a run that wrote nothing leaves nothing behind."""
    folder, created = Path(folder), []
    missing = folder
    while not missing.exists() and missing != missing.parent:
        created.append(missing)
        missing = missing.parent
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    finally:
        for made in created:  # innermost first; a folder holding anything stays, and so do its parents
            try:
                made.rmdir()
            except OSError:
                break


def atomic_write_text(path, text: str):
    """A text file, atomically (see atomic_write)."""
    atomic_write(path, lambda f: f.write(text), "w")
