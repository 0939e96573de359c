"""Files written whole or not at all: each is written under a temporary name beside it, then renamed
over its final name (``os.replace``, atomic on one file system), so a reader or a kill never sees a
half-written file, and a failure leaves the previous version in place."""

from __future__ import annotations

import contextlib
import csv
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
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
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
