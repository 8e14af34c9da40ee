"""Writing an output folder as a whole: into a hidden folder beside it, swapped in only once complete.

A reader never sees a half-written folder, and a failed or interrupted run (an exception, Ctrl-C) leaves the
previous contents of the folder exactly as they were. ``kill -9`` leaves the folder as it was too, plus the
hidden ``.<name>.<hex>.tmp`` folder being written beside it (or, between the swap's two renames, the previous
folder under ``.<name>.<hex>.old.tmp``); the output-folder checks treat such names as temporary.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def _hidden_sibling(out: Path, suffix: str) -> Path:
    # `.<name>.<hex><suffix>`: a name ending in `.tmp` that the output-folder checks treat as temporary
    return out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}{suffix}")


def swap_in(staged: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Put the complete folder ``staged`` at ``out``, replacing what ``out`` held; returns ``out``.

    ``out`` (if it exists) is renamed aside, ``staged`` renamed into its place, then the old folder deleted: each
    rename is atomic, so ``out`` holds either all of its old contents or all of the new ones.
    """
    staged, out = Path(staged), Path(out)
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, out)
        return out
    old = _hidden_sibling(out, ".old.tmp")
    os.replace(out, old)
    try:
        os.replace(staged, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out


@contextlib.contextmanager
def staged_output_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``out`` to write into; swap it in at ``out`` when the block ends.

    Check ``out`` first (:func:`check_output_dir` or the writer's own rule): whatever ``out`` held is replaced as
    a whole. When the block raises (Ctrl-C included), the hidden folder is deleted and ``out`` is left untouched.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     out = Path(d) / "out"
    ...     with staged_output_dir(out) as tmp:
    ...         _ = (tmp / "a.txt").write_text("new")
    ...         print(out.exists())
    ...     print(sorted(p.name for p in Path(d).iterdir()), (out / "a.txt").read_text())
    False
    ['out'] new
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = _hidden_sibling(out, ".tmp")
    staged.mkdir()
    try:
        yield staged
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    try:
        swap_in(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
