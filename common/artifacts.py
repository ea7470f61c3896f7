"""The artifact store as the Django side sees it: built once per process from the settings.

Every artifact has a key: its path relative to DATA_DIR (common.store). Writers produce files
in their usual place under DATA_DIR and `publish` them; readers ask `local_path(key)` for a
path they can open. With the local store both are free (DATA_DIR is the store); with S3,
`publish` uploads and `local_path` downloads once into this host's bounded cache, so a host
needs nothing on disk but that cache.

A path sent to another process (the inference service's `lora_path`) goes as `portable(path)`:
`store:<key>` for a cached copy, which the receiver turns back into its own local path
(`resolve_portable`).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from django.conf import settings

from common.store import Cache, LocalStore, S3Store, Store, put_tree, tree_complete

logger = logging.getLogger(__name__)

PORTABLE = "store:"


@lru_cache(maxsize=1)
def _build() -> tuple[Store, Cache | None]:
    if settings.STORAGE_BACKEND != "s3":
        return LocalStore(settings.DATA_DIR), None
    store = S3Store(
        settings.S3_BUCKET,
        endpoint_url=settings.S3_ENDPOINT_URL,
        region=settings.S3_REGION,
        access_key=settings.S3_ACCESS_KEY_ID,
        secret_key=settings.S3_SECRET_ACCESS_KEY,
    )
    cache = Cache(store, settings.TUNERY_STORE_CACHE_DIR, settings.TUNERY_STORE_CACHE_BYTES)
    return store, cache


def reset() -> None:
    """Forget the built store (tests that change the settings)."""
    _build.cache_clear()


def store() -> Store:
    return _build()[0]


def cache() -> Cache | None:
    """This host's cache of the remote store; None with the local store (nothing to cache)."""
    return _build()[1]


def is_remote() -> bool:
    return store().remote


def key_of(path: Path | str) -> str:
    """The key of a path under DATA_DIR (or in this host's cache), or of a relative path."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    c = cache()
    if c is not None and (key := c.key_of(p)) is not None:
        return key
    return p.resolve().relative_to(Path(settings.DATA_DIR).resolve()).as_posix()


def publish_tree(path: Path | str, key: str | None = None) -> str:
    """Store the tree at `path` (under DATA_DIR) under its key; returns the key."""
    key = key or key_of(path)
    if is_remote():
        put_tree(store(), key, Path(path))
    return key


def publish_file(path: Path | str, key: str | None = None) -> str:
    key = key or key_of(path)
    if is_remote():
        store().put_file(key, Path(path))
    return key


def local_path(key_or_path: Path | str, *, tree: bool = True) -> Path:
    """A local path for an artifact: DATA_DIR/key with the local store (or a path that exists
    here), else this host's cached copy, fetched once. FileNotFoundError if the store lacks
    it."""
    p = Path(key_or_path)
    if p.is_absolute() and (p.exists() or not is_remote()):
        return p
    key = key_of(p)
    c = cache()
    if c is None:
        return Path(settings.DATA_DIR) / key
    local = Path(settings.DATA_DIR) / key
    if local.exists():  # written on this host and still here (a running job's own files)
        return local
    if not tree:
        return c.fetch(key)
    # A path inside a stored tree (a checkpoint's `model/`, an artifact's `adapter/`): fetch
    # the tree, the nearest complete one above it.
    parts = key.split("/")
    for cut in range(len(parts), max(len(parts) - 3, 1) - 1, -1):
        top = "/".join(parts[:cut])
        if (c.path_of(top)).exists() or tree_complete(store(), top):
            return c.fetch(top, tree=True).joinpath(*parts[cut:])
    raise FileNotFoundError(f"no stored tree holds {key!r}")


def tree_exists(key: str) -> bool:
    if not is_remote():
        return (Path(settings.DATA_DIR) / key).exists()
    return tree_complete(store(), key)


def delete_tree(key_or_path: Path | str) -> None:
    """Delete an artifact's objects (and this host's cached copy). Local files are the
    caller's to remove, as before."""
    if not is_remote():
        return
    key = key_of(key_or_path)
    try:
        store().delete_prefix(key)
    except Exception:  # the store is unreachable: leave it to the retention GC
        logger.exception("could not delete %s from the store", key)
    c = cache()
    if c is not None:
        c.drop(key)


def portable(path: Path | str) -> str:
    """How to name `path` to another host: `store:<key>` for what lives in the store."""
    if is_remote():
        p = Path(path)
        c = cache()
        if c is not None and c.key_of(p) is not None:
            return PORTABLE + key_of(p)
        try:
            return PORTABLE + key_of(p)
        except ValueError:
            pass  # outside DATA_DIR (a base model's source): a path every host has
    return str(path)


def resolve_portable(name: str) -> Path:
    """The receiving side of `portable`: a local path for a `store:<key>` or a plain path."""
    if name.startswith(PORTABLE):
        return local_path(name[len(PORTABLE) :])
    return Path(name)
