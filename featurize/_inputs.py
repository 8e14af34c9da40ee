"""Which slides a run covers: files, directories, CSV lists, patient tables, shards, file fingerprints."""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from slide2expr.contract import STORE_JSON, StoreError, check_id, tcga_patient
from slide2expr.featurize._reader import SLIDE_EXTENSIONS
from slide2expr.featurize._slide import MPP_RANGE

#: Bytes hashed at the head of a slide file for its fingerprint.
HEAD_BYTES = 1 << 20


class SlideListError(ValueError):
    """The slides argument (paths, directory, CSV, shard, patient table) is unusable; the message says why."""


@dataclass(frozen=True)
class SlideInput:
    """One slide to featurize.

    Attributes
    ----------
    path : Path
    slide_id : str
        Store key (file stem unless a CSV names it).
    patient_id : str
        From the CSV / patient table, else the TCGA barcode's patient, else the slide id.
    mpp : float | None
        Level-0 µm/px for this slide, used instead of its metadata (CSV ``mpp`` column).
    mpp_fallback : float | None
        Level-0 µm/px used only where the metadata has none or an implausible one (``--mpp-override``).
    """

    path: Path
    slide_id: str
    patient_id: str
    mpp: float | None = None
    mpp_fallback: float | None = None


def _delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() in (".tsv", ".txt") else ","


def _read_table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh, delimiter=_delimiter(path)))
    return [{(k or "").strip().lower(): (v or "").strip() for k, v in r.items()} for r in rows]


def _header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        first = next(csv.reader(fh, delimiter=_delimiter(path)), [])
    return [c.strip().lower() for c in first]


def read_patient_table(path: str | os.PathLike) -> dict[str, str]:
    """A slide→patient map from a CSV/TSV with columns ``patient_id`` and ``slide_id`` and/or ``path``.

    Keys are slide ids and, where given, file names and resolved paths.
    """
    p = Path(path)
    if not p.is_file():
        raise SlideListError(f"patient table {p} does not exist")
    rows = _read_table(p)
    if not rows or "patient_id" not in rows[0] or not ({"slide_id", "path"} & set(rows[0])):
        raise SlideListError(
            f"patient table {p} needs columns patient_id and slide_id (or path); found {sorted(rows[0]) if rows else 'no rows'}"
        )
    out: dict[str, str] = {}
    for i, r in enumerate(rows, start=2):
        pid = r.get("patient_id", "")
        if not pid:
            raise SlideListError(f"patient table {p} line {i}: empty patient_id")
        if r.get("slide_id"):
            out[r["slide_id"]] = pid
        if r.get("path"):
            q = Path(r["path"])
            out[q.name] = pid
            out[str((p.parent / q).resolve() if not q.is_absolute() else q)] = pid
    return out


def _float_or_fail(value: str, *, where: str) -> float | None:
    if value in ("", None):
        return None
    try:
        mpp = float(value)
    except ValueError:
        raise SlideListError(f"{where}: mpp {value!r} is not a number (µm/px)") from None
    problem = level0_mpp_problem(mpp)
    if problem:
        raise SlideListError(f"{where}: mpp {mpp}: {problem}")
    return mpp


def level0_mpp_problem(mpp: float) -> str | None:
    """Why ``mpp`` is no plausible level-0 resolution in µm/px (``MPP_RANGE``), or None when it is one."""
    if not MPP_RANGE[0] <= mpp <= MPP_RANGE[1]:  # also catches nan
        return f"a level-0 resolution is {MPP_RANGE[0]}–{MPP_RANGE[1]} µm/px (0.25 for 40x, 0.5 for 20x)"
    return None


def _read_slide_list(p: Path, found: list, missing: list[str]) -> None:
    """Add the rows of slide list ``p`` to ``found`` as (path, slide_id, patient_id, mpp), and those whose file
    does not exist to ``missing``."""
    rows = _read_table(p)
    if "path" not in (rows[0] if rows else _header(p)):
        raise SlideListError(f"slide list {p} needs a 'path' column (optional: slide_id, patient_id, mpp)")
    if not rows:
        raise SlideListError(f"slide list {p} lists no slides (a header and no rows)")
    for i, r in enumerate(rows, start=2):
        if not r.get("path"):
            raise SlideListError(f"slide list {p} line {i}: empty path")
        q = Path(r["path"])
        q = q if q.is_absolute() else (p.parent / q)
        if not q.exists():
            missing.append(f"{q} ({p} line {i})")
            continue
        mpp = _float_or_fail(r.get("mpp", ""), where=f"{p} line {i}")
        found.append((q, r.get("slide_id") or None, r.get("patient_id") or None, mpp))


def collect_slides(
    inputs: str | os.PathLike | list[str | os.PathLike],
    *,
    patients: str | os.PathLike | dict[str, str] | None = None,
    mpp_override: float | None = None,
) -> list[SlideInput]:
    """Turn slide files, directories (searched recursively) and CSV/TSV lists into sorted :class:`SlideInput`.

    A CSV/TSV has a ``path`` column (relative to the CSV) and optional ``slide_id``, ``patient_id`` and ``mpp``.
    Patient ids come from the CSV, then ``patients`` (a table or a dict keyed by slide id, file name or path),
    then the TCGA barcode, then the slide id itself.

    Returns
    -------
    list[SlideInput]
        Sorted by slide id. Raises :class:`SlideListError` for missing inputs (a slide file that does not exist,
        given or listed, is refused before anything is written, with the nearest names beside it) and duplicate
        slide ids.

    Examples
    --------
    >>> try:
    ...     collect_slides(["no/such/slide.svs"])
    ... except SlideListError as exc:
    ...     print(exc)
    1 slide file does not exist: no/such/slide.svs; fix its path (nothing was written)
    """
    items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    problem = level0_mpp_problem(float(mpp_override)) if mpp_override is not None else None
    if problem:
        raise SlideListError(f"mpp_override={mpp_override}: {problem}")
    pmap = read_patient_table(patients) if isinstance(patients, (str, os.PathLike)) else dict(patients or {})
    found: list[tuple[Path, str | None, str | None, float | None]] = []
    missing: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            stores = {m.parent for m in p.rglob(STORE_JSON)}  # a store's QC PNGs are not slides
            for f in sorted(p.rglob("*")):
                wanted = f.suffix.lower() in SLIDE_EXTENSIONS and not f.name.startswith(".")
                if wanted and f.is_file() and not stores.intersection(f.parents):
                    found.append((f, None, None, None))
        elif p.is_file() and p.suffix.lower() in (".csv", ".tsv"):
            _read_slide_list(p, found, missing)
        elif p.suffix.lower() in (".csv", ".tsv"):
            raise SlideListError(f"slide list {p} does not exist (or is not a file)")
        elif p.exists():
            found.append((p, None, None, None))
        elif p.suffix:
            missing.append(str(p))
        else:
            raise SlideListError(f"{p} is neither a slide file, a directory nor a CSV/TSV slide list")
    if missing:
        raise SlideListError(missing_message(missing))
    if not found:
        raise SlideListError(
            f"no slides found in {', '.join(map(str, items))} (extensions: {' '.join(SLIDE_EXTENSIONS)})"
        )
    out: dict[str, SlideInput] = {}
    for path, sid, pid, mpp in found:
        fix = "fix its slide_id in the slide list" if sid else "give it a slide_id in a CSV slide list"
        sid = sid or path.stem
        try:
            check_id(sid)
        except StoreError as exc:
            raise SlideListError(f"{path}: {exc}; {fix}") from None
        if sid in out:
            raise SlideListError(
                f"slide id {sid!r} is used twice ({out[sid].path} and {path}); give unique slide_id values in a CSV"
                + (
                    " (a thumbnail or label image beside its slide: move it out of the folder, or list the slides "
                    "in a CSV)"
                    if out[sid].path.parent == path.parent
                    else ""
                )
            )
        pid = (
            pid
            or pmap.get(sid)
            or pmap.get(path.name)
            or pmap.get(str(path.resolve()))
            or tcga_patient(sid)
            or sid
        )
        out[sid] = SlideInput(path=path, slide_id=sid, patient_id=pid, mpp=mpp, mpp_fallback=mpp_override)
    return [out[k] for k in sorted(out)]


#: missing slide files named in the message at most
MISSING_SHOWN = 5


def missing_message(missing: list[str]) -> str:
    """One line for slide files that do not exist: the first few, each with the nearest names in its folder."""
    import difflib

    shown = []
    for m in missing[:MISSING_SHOWN]:
        path = Path(m.split(" (", 1)[0])
        near: list[str] = []
        if path.parent.is_dir():
            names = [f.name for f in path.parent.iterdir() if f.suffix.lower() in SLIDE_EXTENSIONS]
            near = difflib.get_close_matches(path.name, names, n=2, cutoff=0.6)
        shown.append(m + (f" (did you mean {' or '.join(near)}?)" if near else ""))
    more = f" and {len(missing) - MISSING_SHOWN} more" if len(missing) > MISSING_SHOWN else ""
    n = len(missing)
    return (
        f"{n} slide file{'s do' if n > 1 else ' does'} not exist: {', '.join(shown)}{more}; "
        f"fix {'their paths' if n > 1 else 'its path'} (nothing was written)"
    )


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)`` with ``0 <= i < n``; None → ``(0, 1)``."""
    if shard is None:
        return 0, 1
    if isinstance(shard, tuple):
        i, n = shard
    else:
        try:
            a, b = str(shard).split("/")
            i, n = int(a), int(b)
        except ValueError:
            raise SlideListError(f"shard={shard!r}: expected 'i/n', e.g. '0/4'") from None
    if n < 1 or not 0 <= i < n:
        raise SlideListError(f"shard='{i}/{n}': need 0 <= i < n")
    return i, n


def select_shard(slides: list[SlideInput], shard: str | tuple[int, int] | None) -> list[SlideInput]:
    """The slides of shard ``i/n``: every n-th slide by sorted slide id, starting at i (deterministic)."""
    i, n = parse_shard(shard)
    ordered = sorted(slides, key=lambda s: s.slide_id)
    return ordered[i::n]


def file_fingerprint(path: str | os.PathLike) -> dict:
    """``{"size", "mtime_ns", "head_sha256"}`` of a file (sha256 of its first MiB); None values if missing."""
    p = Path(path)
    try:
        st = p.stat()
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            h.update(fh.read(HEAD_BYTES))
        return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "head_sha256": h.hexdigest()}
    except OSError:
        return {"size": None, "mtime_ns": None, "head_sha256": None}
