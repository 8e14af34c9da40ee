"""The output folders of ``compare`` (a run directory) and ``train`` (a model directory): refuse a non-empty one
unless told to replace it, and then replace its previous contents cleanly."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from regress._compare import RUN_FILES

#: What slide2expr writes into a run directory (compare; explain's ``explain/`` and ``localisation.parquet``; the
#: demo's ``truth_tiles.parquet``) or a model directory (train). ``overwrite=True`` deletes these and nothing else.
KNOWN_OUTPUTS = frozenset(RUN_FILES) | {
    "models",
    "plots",
    "explain",
    "localisation.parquet",
    "truth_tiles.parquet",
    "model.joblib",
}


class OutputExistsError(ValueError):
    """An output folder that is not empty: pass ``overwrite=True`` (``--force``) or choose another folder."""


def _is_temporary(name: str) -> bool:
    # the atomic writers' hidden temporary files (`.<name>.<hex>.tmp`) left by an interrupted run
    return name.startswith(".") and name.endswith(".tmp")


def describe_output(root: str | os.PathLike) -> str:
    """What ``root`` holds, in words: ``"a compare run"`` (…), ``"a model written by train"`` or ``"files"``."""
    root = Path(root)
    if (root / "model.joblib").exists():
        return "a model written by train"
    try:
        config = json.loads((root / "config.json").read_text())
    except (OSError, ValueError):
        config = None
    if isinstance(config, dict) and "n_folds" in config:
        return "a compare run" + (" with explain output" if (root / "explain").exists() else "")
    return "files"


def check_output_dir(
    out: str | os.PathLike, *, overwrite: bool, option: str = "out", flag: str = "overwrite=True"
) -> Path:
    """Raise :class:`OutputExistsError` unless ``out`` may be written: absent, empty, or replaceable.

    A non-empty folder is refused unless ``overwrite``; with ``overwrite``, one that holds anything slide2expr did
    not write (see :data:`KNOWN_OUTPUTS`) is refused too, naming those entries, so nothing of the user's is deleted.
    ``option`` and ``flag`` name the argument and the way to replace in the messages (``"--out"`` and
    ``"--force"`` for the CLI).
    """
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise OutputExistsError(f"{option} {root} is a file, not a folder: choose another {option}")
    if not root.is_dir():
        return root
    entries = sorted(p.name for p in root.iterdir())
    if not entries:
        return root
    if not overwrite:
        raise OutputExistsError(
            f"{option} {root} is not empty (it holds {describe_output(root)}): choose another {option}, or replace "
            f"its contents with {flag}"
        )
    foreign = [n for n in entries if n not in KNOWN_OUTPUTS and not _is_temporary(n)]
    if foreign:
        shown = ", ".join(foreign[:10]) + (" …" if len(foreign) > 10 else "")
        raise OutputExistsError(
            f"{option} {root} holds entries that slide2expr did not write ({shown}): not replacing it even with "
            f"{flag}; choose another {option}, or move those away"
        )
    return root


def prepare_output_dir(out: str | os.PathLike, *, overwrite: bool, option: str = "out") -> Path:
    """Check ``out`` (:func:`check_output_dir`), delete its previous slide2expr outputs, and create it.

    Returns the folder, empty. With ``overwrite``, everything of an earlier run or model directory goes (fold
    models, ``explain/``, the report), so nothing stale is left beside the new outputs.
    """
    root = check_output_dir(out, overwrite=overwrite, option=option)
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    root.mkdir(parents=True, exist_ok=True)
    return root
