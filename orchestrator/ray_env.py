"""The Ray settings every process of ours runs with, made explicit.

Ray 2.60 turns token authentication on by default for new local clusters, but a
process that sets RAY_AUTH_MODE=token itself must also have a token, or the GCS
refuses to start. We always run with token auth and make sure a token exists.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

DEFAULT_TOKEN_PATH = Path.home() / ".ray" / "auth_token"


def token_path() -> Path:
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH", DEFAULT_TOKEN_PATH))


def prepare_ray_environment() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Ray Train gives a worker group 60 s to start; a busy node importing torch in every worker can take longer.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    if os.environ["RAY_AUTH_MODE"].lower() != "token" or os.environ.get("RAY_AUTH_TOKEN"):
        return
    path = token_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))


def auth_token() -> str:
    return os.environ.get("RAY_AUTH_TOKEN") or token_path().read_text().strip()
