"""A real S3 server process for the tests: ``moto_server`` on 127.0.0.1, on a free port, stopped after.

The code under test talks HTTP to it (s3fs, pyarrow's S3 filesystem, DuckDB through fsspec), as it would to AWS S3
or MinIO. moto's server honours conditional writes (``If-None-Match: *``, ``If-Match``) and ranged reads, but its
threaded server checks a write's condition and stores the object without a lock, so two racing conditional PUTs can
both succeed, which AWS S3 never allows. The server here is moto's own application (what ``moto_server`` runs)
with writing requests (PUT, POST, DELETE) serialised, so conditional writes are atomic as on S3; reads stay
concurrent. Run as a script, this module is that server: ``python tests/_s3server.py HOST PORT``.

Fixtures (import them into a ``conftest.py``):

- ``s3_server``: the endpoint URL, for the whole session;
- ``s3_env``: a fresh bucket, with the AWS variables pointing at the server for the test; yields ``s3://bucket``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

#: credentials moto accepts (any); set only for the tests
TEST_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SerialWrites:
    """WSGI middleware: one writing request at a time (a conditional PUT's check and store become atomic)."""

    def __init__(self, app) -> None:
        import threading

        self.app, self.lock = app, threading.Lock()

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") in ("PUT", "POST", "DELETE"):
            with self.lock:
                return list(self.app(environ, start_response))
        return self.app(environ, start_response)


def serve(host: str, port: int) -> None:
    """Run moto's server application (as ``moto_server`` does) with writes serialised, until terminated."""
    import signal

    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    os.environ.setdefault("MOTO_PORT", str(port))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(host, port, SerialWrites(app), threaded=True, request_handler=MotoRequestHandler)


def _moto_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("moto") is not None and importlib.util.find_spec("flask") is not None


def start_moto(*, timeout_s: float = 30.0) -> tuple[subprocess.Popen, str]:
    """Start the S3 server on 127.0.0.1 and a free port; return the process and its endpoint once it answers."""
    if not _moto_installed():
        pytest.skip("moto's server is not installed (pip install 'moto[server]', part of the dev extra)")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "127.0.0.1", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode} before answering on {endpoint}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"moto_server did not answer on {endpoint} within {timeout_s} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def make_bucket(endpoint: str) -> str:
    """A new bucket on the server (a unique name); returns its name."""
    import boto3

    name = f"s2e-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_boto_keys())
    client.create_bucket(Bucket=name)
    return name


def _boto_keys() -> dict[str, str]:
    return {"aws_access_key_id": TEST_KEYS["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": "testing"}


def server_env(endpoint: str) -> dict[str, str]:
    """The AWS variables that point a process at the test server."""
    return {**TEST_KEYS, "AWS_ENDPOINT_URL": endpoint}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    proc, endpoint = start_moto()
    try:
        yield endpoint
    finally:
        stop(proc)


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for k, v in server_env(s3_server).items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    yield f"s3://{make_bucket(s3_server)}"


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
