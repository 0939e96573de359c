"""Files written whole or not at all: each is written under a temporary name beside it, then renamed
over its final name (``os.replace``, atomic on one file system), so a reader or a kill never sees a
half-written file, and a failure leaves the previous version in place."""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os


def temporary_name(path: str | os.PathLike) -> str:
    """A hidden sibling of ``path`` that keeps its file name, suffixes included (nibabel, Keras and
    matplotlib choose the format by the suffix), unique to this process."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(folder, f".tmp-{os.getpid()}-{name}")


@contextlib.contextmanager
def written_whole(path: str | os.PathLike):
    """Yields a temporary name to write ``path`` to (by any writer); renamed over ``path`` when
    the block ends without an error, removed when it raises (the old ``path``, if any, untouched)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temporary_name(path)
    try:
        with naming(path, tmp):
            yield tmp
            os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            with contextlib.suppress(OSError):
                os.remove(tmp)


@contextlib.contextmanager
def open_whole(path: str | os.PathLike, mode: str = "w", **kwargs):
    """``open(path, mode)`` written whole (see ``written_whole``): a text or binary write mode."""
    if not mode.startswith("w"):
        raise ValueError(f"open_whole writes a new file; mode {mode!r} is not a write mode")
    with written_whole(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` (a final newline added when missing), UTF-8, whole."""
    with open_whole(path, encoding="utf-8") as f:
        f.write(text if text.endswith("\n") else text + "\n")


def write_json(path: str | os.PathLike, value, indent: int | None = 2) -> None:
    with open_whole(path, encoding="utf-8") as f:
        json.dump(value, f, indent=indent)
        f.write("\n")


def write_csv(path: str | os.PathLike, rows, header=None) -> None:
    """``rows`` (lists, or dicts with ``header`` as their keys), whole."""
    with open_whole(path, newline="") as f:
        if header is not None and rows and isinstance(rows[0], dict):
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
            return
        writer = csv.writer(f)
        if header is not None:
            writer.writerow(header)
        writer.writerows(rows)


# --- operating-system errors as one line -----------------------------------------------------------
@contextlib.contextmanager
def naming(path: str | os.PathLike, *temporary: str):
    """An ``OSError`` raised in the block names ``path``: one that names no file (a writer such as
    gzip, h5py or nibabel reporting a full disk as ``[Errno 28] No space left on device``), or that
    names one of ``temporary`` (the hidden name ``path`` is written under), gets ``path`` instead."""
    try:
        yield
    except OSError as e:
        if not e.filename or os.fspath(e.filename) in temporary:
            e.filename = os.fspath(path)
        raise


def file_in_path(path: str | os.PathLike) -> str | None:
    """The first regular file among ``path`` and the folders above it, else None: where a folder was
    to be made inside a file (``/data/notes.txt/tfds``)."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    while True:
        if os.path.isfile(path):
            return path
        if os.path.isdir(path):
            return None
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def free_space(path: str | os.PathLike) -> str | None:
    """``'3.2 MB free'`` on the file system of ``path`` (or of the nearest existing folder above it)."""
    import shutil

    path = os.path.abspath(os.fspath(path))
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return None
    return f"{free / 1e9:.1f} GB free" if free >= 1e9 else f"{free / 1e6:.1f} MB free"


# operating-system errors that other libraries report in their own exceptions (TensorFlow's file
# writers: ``ResourceExhaustedError: <path>; No space left on device``, which TFDS wraps again in a
# RuntimeError), recognised by the system's own wording
WRITE_ERRORS = tuple(c for c in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS, errno.EACCES,
                                 errno.EPERM, errno.ENOTDIR) if c is not None)


def as_os_error(exc: BaseException | None) -> OSError | None:
    """The operating-system error behind ``exc``: ``exc`` itself or an exception it was raised from
    (``__cause__``, or ``__context__`` unless raised ``from None``) that is an ``OSError``, or whose message carries the system's
    text of a write error (full disk, read-only file system, permission denied, a file where a folder
    should be) -- rebuilt as an ``OSError`` with the file named before the ``;`` of TensorFlow's
    ``<path>; <reason>``. None when there is none (the innermost such error wins)."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    for e in reversed(chain):
        if isinstance(e, OSError):
            return e
        text = str(getattr(e, "message", None) or e)
        for code in WRITE_ERRORS:
            reason = os.strerror(code)
            if reason in text:
                head = text.split(reason)[0].rstrip("; :")
                filename = head if head.startswith(os.sep) and "\n" not in head else None
                return OSError(code, reason, filename)
    return None


FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", -1))
READ_ONLY = (errno.EROFS,)
DENIED = (errno.EACCES, errno.EPERM)


def os_error(e: OSError, where: str | os.PathLike | None = None, elsewhere: str | None = None,
             fix: str | None = None) -> str:
    """One line for an operating-system error (disk full, read-only, permission denied, a file where a
    folder should be, ...): ``<file>: <what happened>; <what to do>``. The file is the error's own,
    else ``where`` (what was being written or read); the advice is the error's (free space, write
    access, ...), offering ``elsewhere`` (e.g. "choose another --run-dir") as the other way out, or
    ``fix`` instead. Every command and every library error made from an ``OSError`` goes through here."""
    path = e.filename or where
    path = os.fspath(path) if path else None
    code = e.errno
    other = elsewhere or "write somewhere else"
    if code in FULL:
        free = free_space(path) if path else None
        what = ("no space left on device" if code == errno.ENOSPC else "disk quota exceeded") \
            + (f" ({free} there)" if free else "")
        advice = f"free space on that disk, or {other}"
    elif code in READ_ONLY:
        what, advice = "read-only file system", elsewhere or "write to a folder on a writable disk"
    elif code in DENIED:
        what, advice = "permission denied", f"give yourself access to it, or {other}"
    elif code == errno.ENOTDIR and path:
        found = file_in_path(path)
        what = f"{found} is a file, not a folder" if found and found != path else "not a folder"
        advice = "name a folder" + (f" ({elsewhere})" if elsewhere else "")
    elif code == errno.EISDIR:
        what, advice = "is a folder, not a file", "name a file"
    elif code == errno.ENOENT:
        what, advice = "not found", "check the path"
    else:
        what = e.strerror or f"{type(e).__name__}: {e}"
        advice = elsewhere
    advice = fix or advice
    text = f"{path}: {what}" if path else what
    return f"{text}; {advice}" if advice else text


def file_digest(path) -> str:
    """SHA-256 of a file's content, read in 1 MiB chunks (what a checkpoint, a calibration's healthy
    scans, a localized scan and a preprocessed head are recognised by, whatever their names or dates)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def disk_use(folder: str) -> str:
    """``'285 MB in 213 files'``: what is under ``folder`` (every file, links followed as ``os.walk`` does)."""
    sizes = [os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(folder) for f in names]
    return f"{sum(sizes) / 1e6:.0f} MB in {len(sizes)} files"
