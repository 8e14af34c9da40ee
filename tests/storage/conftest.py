"""Object storage and claims: a real S3 server process (``tests/_s3server.py``) for the whole session."""

from __future__ import annotations

from tests._s3server import s3_env, s3_server  # noqa: F401 - fixtures
