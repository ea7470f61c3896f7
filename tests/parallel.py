"""Gives each pytest-xdist worker its own data directory and Redis database.

`make test` runs the suite in TEST_WORKERS processes (`-n`, a test file at a time) and loads
this module with `-p tests.parallel`. It runs at import, before pytest-django reads the
settings, so everything derived from DATA_DIR (SQLite, the filesystem broker, media, static
files) is the worker's own. Each worker already gets its own test database (pytest-django adds
`_gw0`, `_gw1`… to its name); the Redis database matters as much: a worker's Celery processes
must never take the other worker's tasks, and `tests.workers.purge_broker` flushes the whole
database. The model cache stays shared, since a converted base model is the same for all and
costs a minute to build (engine.models locks it against two converting at once).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

# xdist sets it in each worker's environment before that worker's pytest loads its plugins;
# the controlling process has none and is left as it is.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")


def _worker_broker(url: str, index: int) -> str:
    """The Redis database `index` below the configured one (15, 14… for gw0, gw1…)."""
    parts = urlsplit(url)
    database = int(parts.path.strip("/") or 0) - index
    if database < 0:
        raise RuntimeError(f"no Redis database left for xdist worker {index} below {url}")
    return urlunsplit(parts._replace(path=f"/{database}"))


if WORKER:
    index = int(WORKER.removeprefix("gw"))
    root = Path(os.environ.get("DATA_DIR") or Path(__file__).resolve().parents[1] / "var")
    os.environ.setdefault("TUNERY_MODEL_CACHE_DIR", str(root / "model-cache"))
    os.environ["DATA_DIR"] = str(root / "xdist" / WORKER)
    broker = os.environ.get("CELERY_BROKER_URL", "")
    if broker.startswith("redis"):
        os.environ["CELERY_BROKER_URL"] = _worker_broker(broker, index)
