"""Outputs written all or nothing: a file refquant writes is either absent, its previous
version, or complete, whatever interrupts the write (docs/SPECIFICATION.md, section 17).

The rule: write a temporary ``.<name>.<random>.partial`` beside the target, flush it to disk,
rename it over the target (``os.replace``, atomic on POSIX and Windows within a folder). A killed
process leaves only its ``.partial`` file, which no reader takes for the output; the next write
of the same target, and :func:`remove_partials` of its folder, delete such leftovers.
"""
import os
import tempfile
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def atomic_write(path, write):
    """Write ``path`` all or nothing: ``write(file object)`` fills a temporary file beside it,
    which is flushed to disk and renamed over ``path`` (``os.replace``); on any error the
    temporary file is removed and ``path`` is untouched. Leftovers of an earlier interrupted
    write of ``path`` are removed first (two processes writing one file at once are not supported)."""
    path = Path(path)
    for stale in path.parent.glob(f".{_glob_escape(path.name)}.*{PARTIAL_SUFFIX}"):
        _remove(stale)
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    except OSError as error:  # name the file asked for, not the temporary one
        raise type(error)(error.errno, f"cannot write {path}: {error.strerror}") from None
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; the user's usual mode, as open() would
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_bytes(path, data):
    """:func:`atomic_write` of ``data`` (bytes)."""
    atomic_write(path, lambda f: f.write(data))


def write_text(path, text):
    """:func:`atomic_write` of ``text`` encoded as UTF-8."""
    write_bytes(path, text.encode("utf-8"))


def remove_partials(folder):
    """Delete every ``.*.partial`` file :func:`atomic_write` left in ``folder`` (not below it);
    returns the paths removed. A run calls it on its output folder before writing there."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = [path for path in folder.glob(f".*{PARTIAL_SUFFIX}") if path.is_file()]
    for path in removed:
        _remove(path)
    return removed


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass  # another cleaner was first


def _glob_escape(name):
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _umask():
    """The process's file-creation mask (read by setting it, then restored)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
