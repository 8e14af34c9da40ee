"""Store locations: a local folder or an object-store URI (``s3://bucket/prefix``), reached one way.

A store path (and any path under it) is either a :class:`pathlib.Path` or an :class:`ObjectPath`, which offers the
part of pathlib the stages use: ``/``, ``name``, ``parent``, ``exists()``, ``is_file()``, ``glob()``,
``read_bytes()``, ``open()``, ``unlink()``. :func:`store_path` turns what a user typed into one of them.

Writing keeps the store's promise that a reader never sees a partial file:

- local: a hidden temporary in the same folder, fsynced and renamed into place (:func:`write_file_atomic`,
  :func:`write_parquet_atomic` write exactly what ``write_bytes_atomic``/``write_table_atomic`` write);
- object storage: straight to the final key. A single PUT, or a multipart upload once completed, appears all at
  once, and there is no rename. The Parquet bytes are made locally first (the same writer, the same bytes), so a
  crash while encoding uploads nothing.

Object stores are reached through fsspec (s3fs for ``s3://``; any other fsspec protocol whose package is installed,
e.g. ``gs://`` with gcsfs). fsspec is the filesystem layer pandas, DuckDB, pyarrow and Dask share, and s3fs is its
maintained S3 implementation; DuckDB can scan a registered fsspec filesystem in place. S3 settings come from
:func:`configure_storage` (the command line's flags) or else from the standard AWS variables
(``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``),
read when a filesystem is made, so a changed variable takes effect.

>>> p = store_path("s3://bucket/stores/coad") / "slides" / "TCGA-AA-3511.parquet"
>>> p.name, p.parent.as_posix(), is_remote(p), is_remote("stores/coad")
('TCGA-AA-3511.parquet', 's3://bucket/stores/coad/slides', True, False)
>>> store_path("stores/coad")
PosixPath('stores/coad')
"""

from __future__ import annotations

import fnmatch
import io
import os
import posixpath
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any

import pyarrow as pa

#: ``scheme://`` at the start of a URI (``file://`` is a local path)
_URI = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$")


class StorageError(OSError):
    """An object store cannot be reached as configured; the message says which setting to give."""


# ---- settings ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Settings:
    """Where and as whom to reach S3: explicit values (:func:`configure_storage`) over the AWS variables."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None

    #: the AWS variable each field falls back on, in order
    ENV = {
        "endpoint_url": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
        "access_key_id": ("AWS_ACCESS_KEY_ID",),
        "secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
        "session_token": ("AWS_SESSION_TOKEN",),
    }

    def as_env(self) -> dict[str, str]:
        """The settings as AWS variables (for processes started elsewhere, e.g. Ray workers)."""
        names = {
            "endpoint_url": "AWS_ENDPOINT_URL",
            "region": "AWS_REGION",
            "access_key_id": "AWS_ACCESS_KEY_ID",
            "secret_access_key": "AWS_SECRET_ACCESS_KEY",
            "session_token": "AWS_SESSION_TOKEN",
        }
        return {names[f.name]: v for f in fields(self) if (v := getattr(self, f.name))}


_explicit: dict[str, str] = {}


def configure_storage(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
) -> None:
    """Set S3 settings for this process, over the AWS variables; ``None`` leaves a setting to its variable.

    Examples
    --------
    >>> configure_storage(endpoint_url="http://127.0.0.1:9000", region="eu-west-1")
    >>> s3_settings().endpoint_url
    'http://127.0.0.1:9000'
    >>> configure_storage()  # back to the AWS variables
    """
    given = {
        "endpoint_url": endpoint_url,
        "region": region,
        "access_key_id": access_key_id,
        "secret_access_key": secret_access_key,
        "session_token": session_token,
    }
    _explicit.clear()
    _explicit.update({k: v for k, v in given.items() if v})


def s3_settings() -> S3Settings:
    """The S3 settings in force: :func:`configure_storage`'s values, else the AWS variables."""
    values = {}
    for name, env in S3Settings.ENV.items():
        values[name] = _explicit.get(name) or next((os.environ[e] for e in env if os.environ.get(e)), None)
    return S3Settings(**values)


def _fs_options(scheme: str) -> dict[str, Any]:
    if scheme not in ("s3", "s3a"):
        return {}
    s = s3_settings()
    client: dict[str, Any] = {}
    if s.endpoint_url:
        client["endpoint_url"] = s.endpoint_url
    if s.region:
        client["region_name"] = s.region
    opts: dict[str, Any] = {"client_kwargs": client, "use_listings_cache": False}
    if s.access_key_id and s.secret_access_key:
        opts.update(key=s.access_key_id, secret=s.secret_access_key, token=s.session_token)
    return opts


def filesystem(scheme: str):
    """The fsspec filesystem of ``scheme`` (``s3``, ``gs``, …) with this process's settings (one per settings)."""
    import fsspec

    try:
        return fsspec.filesystem(scheme, **_fs_options(scheme))
    except ImportError as exc:
        raise StorageError(
            f"{scheme}:// stores need an fsspec package for {scheme} ({exc}); for s3:// install s3fs "
            "(pip install 'slide2expr[s3]')"
        ) from None


# ---- paths ------------------------------------------------------------------------------------------------------


class ObjectPath:
    """A file or folder in an object store, e.g. ``s3://bucket/prefix/slides/x.parquet``.

    Pure path operations never touch the network; file operations go through the scheme's fsspec filesystem.
    Object stores have no folders: a folder exists while a key starts with its prefix, and ``mkdir`` does nothing.
    """

    __slots__ = ("_scheme", "_key")

    def __init__(self, uri: str | ObjectPath) -> None:
        if isinstance(uri, ObjectPath):
            self._scheme, self._key = uri._scheme, uri._key
            return
        m = _URI.match(str(uri))
        if not m:
            raise ValueError(f"{uri!r} is not a URI such as s3://bucket/prefix")
        scheme, rest = m.group(1).lower(), m.group(2)
        parts = [p for p in rest.split("/") if p not in ("", ".")]
        if not parts:
            raise ValueError(f"{uri!r} names no bucket: give {scheme}://bucket/prefix")
        self._scheme, self._key = scheme, "/".join(parts)

    # pure path operations
    def __str__(self) -> str:
        return f"{self._scheme}://{self._key}"

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and str(self) == str(other)

    def __lt__(self, other: ObjectPath) -> bool:
        return str(self) < str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, part: str | os.PathLike) -> ObjectPath:
        return ObjectPath(f"{self}/{os.fspath(part) if not isinstance(part, str) else part}")

    def as_posix(self) -> str:
        return str(self)

    @property
    def scheme(self) -> str:
        return self._scheme

    @property
    def fs_path(self) -> str:
        """``bucket/key``: the path fsspec and pyarrow filesystems take."""
        return self._key

    @property
    def name(self) -> str:
        return posixpath.basename(self._key)

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def parent(self) -> ObjectPath:
        head = posixpath.dirname(self._key)
        return ObjectPath(f"{self._scheme}://{head}") if head else self

    @property
    def parents(self) -> tuple[ObjectPath, ...]:
        """The folders above, nearest first, down to the bucket."""
        out, key = [], self._key
        while "/" in key:
            key = posixpath.dirname(key)
            out.append(ObjectPath(f"{self._scheme}://{key}"))
        return tuple(out)

    @property
    def parts(self) -> tuple[str, ...]:
        return (f"{self._scheme}://", *self._key.split("/"))

    def with_name(self, name: str) -> ObjectPath:
        return self.parent / name

    def with_suffix(self, suffix: str) -> ObjectPath:
        return self.with_name(self.stem + suffix)

    def relative_to(self, other: ObjectPath | str) -> PurePosixPath:
        return PurePosixPath(self._key).relative_to(ObjectPath(other)._key)

    def resolve(self) -> ObjectPath:
        return self

    absolute = expanduser = resolve

    def is_absolute(self) -> bool:
        return True

    # file operations
    @property
    def fs(self):
        return filesystem(self._scheme)

    def exists(self) -> bool:
        return bool(self.fs.exists(self._key))

    def is_file(self) -> bool:
        return bool(self.fs.isfile(self._key))

    def is_dir(self) -> bool:
        return bool(self.fs.isdir(self._key))

    def is_symlink(self) -> bool:
        return False

    def stat(self) -> SimpleNamespace:
        try:
            info = self.fs.info(self._key)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self} does not exist") from None
        mtime = info.get("LastModified") or info.get("mtime") or info.get("updated")
        mtime = mtime.timestamp() if hasattr(mtime, "timestamp") else (float(mtime) if mtime else 0.0)
        return SimpleNamespace(
            st_size=int(info.get("size") or 0), st_mtime=mtime, st_mtime_ns=int(mtime * 1e9)
        )

    def iterdir(self) -> Iterator[ObjectPath]:
        try:
            names = self.fs.ls(self._key, detail=False)
        except FileNotFoundError:
            names = []
        for n in sorted(names):
            n = n.rstrip("/")
            if n != self._key:
                yield ObjectPath(f"{self._scheme}://{n}")

    def glob(self, pattern: str) -> Iterator[ObjectPath]:
        """Paths under this folder matching ``pattern`` (``*`` within a name, ``**`` across folders), sorted."""
        if "**" in pattern:
            pat = pattern.strip("/")
            # as in pathlib, a leading ``**/`` also matches no folder at all
            pats = (pat, pat[3:]) if pat.startswith("**/") else (pat,)
            names = [
                n
                for n in self.fs.find(self._key)
                if any(fnmatch.fnmatch(n[len(self._key) + 1 :], q) for q in pats)
            ]
        else:
            names = self.fs.glob(f"{self._key}/{pattern}")
        for n in sorted(names):
            yield ObjectPath(f"{self._scheme}://{n.rstrip('/')}")

    def rglob(self, pattern: str) -> Iterator[ObjectPath]:
        return self.glob(f"**/{pattern}")

    def mkdir(self, mode: int = 0o777, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to make: an object store's folders are key prefixes."""

    def rmdir(self) -> None:
        """Nothing to remove: a folder goes with its last key."""

    def unlink(self, missing_ok: bool = False) -> None:
        if not missing_ok and not self.fs.exists(self._key):
            raise FileNotFoundError(f"{self} does not exist")
        try:
            self.fs.rm_file(self._key)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def open(self, mode: str = "rb", **kwargs):
        if mode not in ("r", "rb"):
            raise ValueError(
                f"{self}: object-store files are written whole (write_file_atomic / write_parquet_atomic), "
                f"not opened with mode {mode!r}"
            )
        f = self.fs.open(self._key, "rb", **kwargs)
        return io.TextIOWrapper(f, encoding="utf-8") if mode == "r" else f

    def read_bytes(self) -> bytes:
        try:
            return self.fs.cat_file(self._key)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self} does not exist") from None

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        _put(self, bytes(data))
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))


StorePath = Path | ObjectPath


def store_location(path: str | os.PathLike | ObjectPath) -> str:
    """``path`` as a run's ``config.json`` records it: a local path made absolute, a URI as it is.

    >>> store_location("s3://bucket/stores/coad/"), store_location("/data/stores/coad")
    ('s3://bucket/stores/coad', '/data/stores/coad')
    """
    p = store_path(path)
    return str(p) if isinstance(p, ObjectPath) else str(p.resolve())


def is_remote(path: str | os.PathLike | ObjectPath) -> bool:
    """Whether ``path`` names an object store (a URI other than ``file://``)."""
    if isinstance(path, ObjectPath):
        return True
    if isinstance(path, Path):
        return False
    m = _URI.match(os.fspath(path))
    return bool(m) and m.group(1).lower() != "file"


def store_path(path: str | os.PathLike | ObjectPath) -> StorePath:
    """``path`` as a :class:`~pathlib.Path` (local, ``file://`` included) or an :class:`ObjectPath` (a URI)."""
    if isinstance(path, ObjectPath | Path):
        return path
    text = os.fspath(path)
    if is_remote(text):
        return ObjectPath(text)
    m = _URI.match(text)
    return Path(m.group(2) if m else text)


# ---- reading and writing ----------------------------------------------------------------------------------------


def read_range(path: str | os.PathLike | ObjectPath, start: int, length: int) -> bytes:
    """``length`` bytes of ``path`` from ``start`` (fewer at the end of the file): one ranged GET on a store."""
    p = store_path(path)
    if isinstance(p, ObjectPath):
        return p.fs.cat_file(p.fs_path, start=start, end=start + length)
    with open(p, "rb") as fh:
        fh.seek(start)
        return fh.read(length)


def open_input(path: str | os.PathLike | ObjectPath, *, block_size: int | None = None):
    """A seekable binary file to read ``path`` (on a store: ranged GETs, ``block_size`` bytes read ahead)."""
    p = store_path(path)
    if isinstance(p, ObjectPath):
        kw = {"block_size": block_size} if block_size else {}
        return p.fs.open(p.fs_path, "rb", **kw)
    return open(p, "rb")


def _put(path: ObjectPath, data: bytes | Path) -> None:
    """Upload to the final key: one PUT, or a multipart upload for large files (visible only once completed)."""
    fs = path.fs
    try:
        if isinstance(data, Path):
            fs.put_file(os.fspath(data), path.fs_path)
        else:
            fs.pipe_file(path.fs_path, data)
    except PermissionError as exc:
        raise StorageError(
            f"{path}: access denied ({exc}); set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or the flags)"
        ) from None
    fs.invalidate_cache(path.fs_path)


def write_file_atomic(path: str | os.PathLike | ObjectPath, data: bytes) -> StorePath:
    """Write ``data`` to ``path`` so that readers see the whole file or none of it; return the path.

    Local: a hidden temporary beside it, fsynced, renamed into place. Object store: one PUT to the final key.
    """
    from slide2expr.contract._store import write_bytes_atomic

    p = store_path(path)
    if isinstance(p, ObjectPath):
        _put(p, bytes(data))
        return p
    return write_bytes_atomic(p, data)


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike | ObjectPath, **kwargs: Any) -> StorePath:
    """Write ``table`` as Parquet to ``path`` atomically, as ``write_table_atomic`` does (same keyword arguments).

    Local: exactly ``write_table_atomic``. Object store: the same writer makes the file in a local temporary folder,
    which is then uploaded to the final key (one PUT, or a multipart upload completed at the end), so the bytes on
    the store are those a local run writes.
    """
    from slide2expr.contract._store import write_table_atomic

    p = store_path(path)
    if not isinstance(p, ObjectPath):
        return write_table_atomic(table, p, **kwargs)
    with tempfile.TemporaryDirectory(prefix="slide2expr-put-") as tmp:
        local = write_table_atomic(table, Path(tmp) / p.name, **kwargs)
        _put(p, local)
    return p


def read_parquet_table(path: str | os.PathLike | ObjectPath, **kwargs: Any) -> pa.Table:
    """``pyarrow.parquet.read_table`` of a local or object-store file (keyword arguments passed on)."""
    import pyarrow.parquet as pq

    p = store_path(path)
    if isinstance(p, ObjectPath):
        with open_input(p) as fh:
            return pq.read_table(fh, **kwargs)
    return pq.read_table(p, **kwargs)


def read_parquet_schema(path: str | os.PathLike | ObjectPath) -> pa.Schema:
    """The Arrow schema (with key-value metadata) of a local or object-store Parquet file (footer only)."""
    import pyarrow.parquet as pq

    p = store_path(path)
    if isinstance(p, ObjectPath):
        with open_input(p, block_size=1 << 16) as fh:
            return pq.read_schema(fh)
    return pq.read_schema(p)


def read_parquet_metadata(path: str | os.PathLike | ObjectPath):
    """The ``pyarrow.parquet.FileMetaData`` (footer only) of a local or object-store Parquet file."""
    import pyarrow.parquet as pq

    p = store_path(path)
    if isinstance(p, ObjectPath):
        with open_input(p, block_size=1 << 16) as fh:
            return pq.read_metadata(fh)
    return pq.read_metadata(p)


def remove_file(path: str | os.PathLike | ObjectPath, *, missing_ok: bool = True) -> None:
    """Delete one file (a missing one is fine unless ``missing_ok`` is False)."""
    store_path(path).unlink(missing_ok=missing_ok)


def pyarrow_filesystem(path: str | os.PathLike | ObjectPath):
    """``(filesystem, path)`` for pyarrow (datasets, ``read_table(…, filesystem=…)``).

    ``s3://``: pyarrow's own S3 filesystem (C++, parallel ranged reads) with this process's settings; other schemes
    wrap their fsspec filesystem; local paths get pyarrow's local filesystem.
    """
    import pyarrow.fs as pafs

    p = store_path(path)
    if not isinstance(p, ObjectPath):
        return pafs.LocalFileSystem(), os.fspath(p.resolve())
    if p.scheme in ("s3", "s3a"):
        s = s3_settings()
        kw: dict[str, Any] = {"region": s.region or "us-east-1"}
        if s.endpoint_url:
            scheme, _, host = s.endpoint_url.partition("://")
            kw.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        if s.access_key_id and s.secret_access_key:
            kw.update(
                access_key=s.access_key_id, secret_key=s.secret_access_key, session_token=s.session_token
            )
        return pafs.S3FileSystem(**kw), p.fs_path
    return pafs.PyFileSystem(pafs.FSSpecHandler(p.fs)), p.fs_path


def register_duckdb(con, path: str | os.PathLike | ObjectPath) -> None:
    """Let DuckDB connection ``con`` read ``path``'s scheme in place (a registered fsspec filesystem).

    DuckDB's own ``httpfs`` extension is downloaded on first use, which an offline machine cannot do; a registered
    fsspec filesystem needs nothing beyond the installed packages and honours the same settings as every other read.
    Local paths need nothing.
    """
    p = store_path(path)
    if isinstance(p, ObjectPath):
        fs = p.fs
        if not con.filesystem_is_registered(fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]):
            con.register_filesystem(fs)
