"""Claims: two writers never take the same slide, whatever engines share a store.

Before a writer (a local run, a SLURM shard, a Ray worker) featurizes a slide for one configuration it takes the
slide's claim, ``STORE/.claims/<tiling>/<encoder>/<slide_id>.claim``, created atomically:

- on a filesystem with ``O_CREAT | O_EXCL`` (atomic on local disks and on NFSv3+, Lustre, GPFS);
- on S3 with a conditional PUT, ``If-None-Match: *`` (the second writer gets 412 Precondition Failed).

The claim is a lease: its holder renews it (:meth:`Claim.renew`, a thread in :meth:`Claim.kept`) while it works,
and deletes it when the slide's files are written. A claim not renewed for ``ttl_s`` seconds is stale, and so is
one whose holder ran on this host and whose process is gone (``kill -9``): a successor takes it over, atomically,
so that of several successors exactly one wins:

- S3: a PUT with ``If-Match: <the stale claim's ETag>``;
- filesystem: an ``O_EXCL`` marker named after the stale claim's nonce, then a re-read (still that claim?) and a
  rename of the successor's claim over it.

A holder that finds its claim taken over (a renewal that fails) stops writing that slide. A writer that takes a claim
checks again whether the slide is done before working: another writer may have finished it in between.

>>> claim_path("STORE", "mpp0.50_px224_ov0", "uni", "TCGA-AA-3511").as_posix()
'STORE/.claims/mpp0.50_px224_ov0/uni/TCGA-AA-3511.claim'
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path

from slide2expr.contract._fs import ObjectPath, StorePath, store_path

CLAIMS_DIR = ".claims"
CLAIM_SUFFIX = ".claim"
#: seconds a claim lives without a renewal; holders renew every third of it
DEFAULT_TTL_S = 120.0


class ClaimError(OSError):
    """A claim cannot be taken or kept on this store (the message says why)."""


def claim_path(store: str | os.PathLike | ObjectPath, tiling: str, encoder: str, slide_id: str) -> StorePath:
    """``STORE/.claims/<tiling>/<encoder>/<slide_id>.claim``: the claim of one slide in one configuration."""
    from slide2expr.contract._store import check_id

    return store_path(store) / CLAIMS_DIR / str(tiling) / encoder / f"{check_id(slide_id)}{CLAIM_SUFFIX}"


@dataclass(frozen=True)
class ClaimInfo:
    """What a claim file says: who holds it, since when, and how long it lives without renewal."""

    owner: str
    host: str
    pid: int
    #: the process's start time (seconds since the epoch), so a reused pid is not taken for the holder
    pid_started: float
    nonce: str
    taken_at: str
    ttl_s: float
    #: seconds since the claim was last written or renewed (filled in when read)
    age_s: float = 0.0

    @property
    def stale(self) -> bool:
        """Not renewed for ``ttl_s`` seconds, or its holder ran on this host and is gone."""
        return self.age_s > self.ttl_s or (
            self.host == _HOST and not _process_alive(self.pid, self.pid_started)
        )

    def describe(self) -> str:
        return f"{self.owner} (host {self.host}, pid {self.pid}, renewed {self.age_s:.0f} s ago)"

    def to_json(self) -> bytes:
        d = asdict(self)
        d.pop("age_s")
        return json.dumps(d, sort_keys=True).encode()


_HOST = socket.gethostname()


def _process_alive(pid: int, started: float) -> bool:
    import psutil

    try:
        return abs(psutil.Process(pid).create_time() - started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def _me(owner: str | None, ttl_s: float) -> ClaimInfo:
    import psutil

    pid = os.getpid()
    return ClaimInfo(
        owner=owner or f"{_HOST}:{pid}",
        host=_HOST,
        pid=pid,
        pid_started=psutil.Process(pid).create_time(),
        nonce=uuid.uuid4().hex,
        taken_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        ttl_s=float(ttl_s),
    )


def _parse(raw: bytes, age_s: float) -> ClaimInfo | None:
    try:
        d = json.loads(raw)
        return ClaimInfo(**{**d, "age_s": age_s})
    except (ValueError, TypeError):
        return None  # a torn or foreign file: treated as stale below


class Claim:
    """A held claim on one slide. Renew it while working (or use :meth:`kept`), release it when done."""

    def __init__(self, path: StorePath, info: ClaimInfo, backend: _Backend, token: object) -> None:
        self.path, self.info, self._backend, self._token = path, info, backend, token
        self.lost = False

    def renew(self) -> bool:
        """Extend the lease; False (and ``lost`` set) when another writer took the claim over."""
        if self.lost:
            return False
        token = self._backend.renew(self.path, self.info, self._token)
        if token is None:
            self.lost = True
            return False
        self._token = token
        return True

    def release(self) -> None:
        """Delete the claim if it is still this holder's (after the slide's files are written, or on giving up)."""
        if not self.lost:
            self._backend.release(self.path, self.info, self._token)
        self.lost = True

    @contextlib.contextmanager
    def kept(self, *, every_s: float | None = None):
        """Renew the claim on a thread while the block runs; release it after (also on error)."""
        stop = threading.Event()
        every = every_s if every_s is not None else max(0.05, self.info.ttl_s / 3)

        def renew() -> None:
            while not stop.wait(every):
                with contextlib.suppress(OSError):
                    if not self.renew():
                        return

        t = threading.Thread(target=renew, name="slide2expr-claim", daemon=True)
        t.start()
        try:
            yield self
        finally:
            stop.set()
            t.join()
            self.release()


def acquire_claim(
    path: str | os.PathLike | ObjectPath,
    *,
    owner: str | None = None,
    ttl_s: float = DEFAULT_TTL_S,
    steal_from: str | None = None,
) -> Claim | None:
    """Take the claim at ``path``: a :class:`Claim`, or None when another live writer holds it.

    A stale claim (see :class:`ClaimInfo`) is taken over; so is one held by ``steal_from`` (an owner the caller
    knows is gone, e.g. a Ray worker on a lost node).
    """
    p = store_path(path)
    backend = _backend(p)
    me = _me(owner, ttl_s)
    for _ in range(4):
        token = backend.create(p, me)
        if token is not None:
            return Claim(p, me, backend, token)
        held = backend.read(p)
        if held is None:
            continue  # released in between: try to create it again
        info, token = held
        if info is not None and not info.stale and info.owner != steal_from:
            return None
        token = backend.take_over(p, me, info, token)
        if token is not None:
            return Claim(p, me, backend, token)
        if backend.read(p) is not None:
            return None  # another successor won
    return None


def read_claim(path: str | os.PathLike | ObjectPath) -> ClaimInfo | None:
    """Who holds the claim at ``path`` (None: nobody, or a file that is no claim)."""
    p = store_path(path)
    held = _backend(p).read(p)
    return None if held is None else held[0]


def _backend(p: StorePath) -> _Backend:
    if isinstance(p, Path):
        return _FileBackend()
    if p.scheme in ("s3", "s3a"):
        return _S3Backend()
    raise ClaimError(
        f"{p}: claims need a local or shared filesystem or s3:// (conditional writes); not {p.scheme}"
    )


class _Backend:
    def create(self, p, me: ClaimInfo) -> object | None: ...
    def read(self, p) -> tuple[ClaimInfo | None, object] | None: ...
    def take_over(self, p, me: ClaimInfo, stale: ClaimInfo | None, token: object) -> object | None: ...
    def renew(self, p, me: ClaimInfo, token: object) -> object | None: ...
    def release(self, p, me: ClaimInfo, token: object) -> None: ...


class _FileBackend(_Backend):
    """``O_EXCL`` creation; the lease's age is the file's mtime, renewed with ``utime``."""

    def create(self, p: Path, me: ClaimInfo) -> object | None:
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return None
        try:
            os.write(fd, me.to_json())
            os.fsync(fd)
        finally:
            os.close(fd)
        return me.nonce

    def read(self, p: Path):
        try:
            raw = p.read_bytes()
            age = time.time() - p.stat().st_mtime
        except FileNotFoundError:
            return None
        info = _parse(raw, age)
        if info is None and age < 5.0:
            # a claim being written right now (created, content not yet there)
            info = ClaimInfo("(being written)", "", -1, 0.0, "", "", ttl_s=5.0, age_s=age)
        return info, (info.nonce if info is not None else raw)

    def take_over(self, p: Path, me: ClaimInfo, stale: ClaimInfo | None, token: object) -> object | None:
        tag = stale.nonce if stale is not None else uuid.uuid5(uuid.NAMESPACE_OID, repr(token)).hex
        marker = p.with_name(f"{p.name}.takeover.{tag}")
        with contextlib.suppress(FileNotFoundError):
            if time.time() - marker.stat().st_mtime > (me.ttl_s if stale is None else stale.ttl_s):
                marker.unlink()  # a successor died between marking and renaming
        try:
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return None
        try:
            again = self.read(p)
            if again is None or again[1] != token:
                return None  # released, renewed into another claim or taken by someone else meanwhile
            tmp = p.with_name(f"{p.name}.{me.nonce}.tmp")
            tmp.write_bytes(me.to_json())
            os.replace(tmp, p)
            return me.nonce
        finally:
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()

    def renew(self, p: Path, me: ClaimInfo, token: object) -> object | None:
        held = self.read(p)
        if held is None or held[1] != me.nonce:
            return None
        os.utime(p)
        return me.nonce

    def release(self, p: Path, me: ClaimInfo, token: object) -> None:
        held = self.read(p)
        if held is not None and held[1] == me.nonce:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _precondition_failed(exc: OSError) -> bool:
    """s3fs turns 412 into FileExistsError (If-None-Match) or OSError(EINVAL) (If-Match)."""
    if isinstance(exc, FileExistsError):
        return True
    cause = exc.__cause__
    code = getattr(cause, "response", {}).get("Error", {}).get("Code") if cause is not None else None
    return code in ("PreconditionFailed", "412", "ConditionalRequestConflict") or exc.errno == errno.EINVAL


async def _get_object(fs, bucket: str, key: str) -> tuple[dict, bytes]:
    """One GET: the claim's bytes with its ETag and Last-Modified (s3fs's own coroutine API)."""
    out = await fs._call_s3("get_object", Bucket=bucket, Key=key)
    async with out["Body"] as stream:
        raw = await stream.read()
    return out, raw


class _S3Backend(_Backend):
    """Conditional PUTs: ``If-None-Match: *`` to create, ``If-Match: <ETag>`` to renew and to take over; the lease's
    age is the server's ``Date`` minus the object's ``Last-Modified`` (one clock: the server's)."""

    @staticmethod
    def _bk(p: ObjectPath) -> tuple[str, str]:
        bucket, _, key = p.fs_path.partition("/")
        return bucket, key

    def _put(self, p: ObjectPath, me: ClaimInfo, **cond: str) -> object | None:
        bucket, key = self._bk(p)
        try:
            out = p.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=me.to_json(), **cond)
        except OSError as exc:
            if _precondition_failed(exc):
                return None
            if getattr(exc, "errno", None) == errno.ENOSYS:
                raise ClaimError(
                    f"{p}: this S3 server does not support conditional writes (If-None-Match/If-Match), so two "
                    "writers could take the same slide; use a server that does (AWS S3, MinIO, moto) or a filesystem"
                ) from None
            raise
        return out.get("ETag")

    def create(self, p: ObjectPath, me: ClaimInfo) -> object | None:
        return self._put(p, me, IfNoneMatch="*")

    def read(self, p: ObjectPath):
        from fsspec.asyn import sync

        bucket, key = self._bk(p)
        fs = p.fs
        try:
            out, raw = sync(fs.loop, _get_object, fs, bucket, key)
        except FileNotFoundError:
            return None
        headers = out.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        try:
            now = parsedate_to_datetime(headers["date"]).timestamp()
        except (KeyError, TypeError, ValueError):
            now = time.time()
        age = max(0.0, now - out["LastModified"].timestamp())
        return _parse(raw, age), out.get("ETag")

    def take_over(
        self, p: ObjectPath, me: ClaimInfo, stale: ClaimInfo | None, token: object
    ) -> object | None:
        return self._put(p, me, IfMatch=str(token))

    def renew(self, p: ObjectPath, me: ClaimInfo, token: object) -> object | None:
        return self._put(p, me, IfMatch=str(token))

    def release(self, p: ObjectPath, me: ClaimInfo, token: object) -> None:
        bucket, key = self._bk(p)
        try:
            p.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=str(token))
        except FileNotFoundError:
            return
        except OSError as exc:
            if _precondition_failed(exc):
                return  # taken over: the successor's claim stays
            # servers without conditional deletes: check, then delete
            held = self.read(p)
            if held is not None and held[1] == token:
                p.fs.call_s3("delete_object", Bucket=bucket, Key=key)
