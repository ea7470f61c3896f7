"""The artifact store: one interface for every file Tunery keeps, on local disk or in S3.

Framework-free (no Django: the settings are read by common.artifacts, which builds the store),
so the runner, the inference service and command-line tools share it.

Keys are `/`-separated paths, the same as an artifact's path relative to DATA_DIR
(`media/files/…`, `jobs/<job>/attempt-K/resume/step-N/…`, `jobs/<job>/checkpoints/step-N/…`,
`models/<org>/<job>/…`, `exports/…`). So:

- `LocalStore(DATA_DIR)` (the embedded default) *is* the working layout: putting a file that
  is already at its key's place is a no-op, and reading needs no copy;
- `S3Store` (production: any S3-compatible store) streams every transfer through boto3's
  transfer manager: multipart uploads and ranged downloads in 8 MiB parts, never a whole file
  in memory;
- `Cache` is a host's bounded local copy of what it read from a remote store: least recently
  used entries go first once `max_bytes` is passed. Several processes share one cache safely:
  every entry is downloaded to a temporary name and renamed into place under an exclusive
  file lock, and readers that `hold` an entry keep a shared lock that eviction respects.

A tree (a checkpoint, an adapter) is stored as its files plus a `.complete` marker written
last, so a reader never takes a half-uploaded tree for a whole one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Protocol

PART = 8 * 1024 * 1024  # multipart part size: memory per transfer is a few parts at most
COMPLETE = ".complete"  # a tree's marker object, written after all its files


class Store(Protocol):
    remote: bool

    def put_file(self, key: str, path: Path) -> None: ...
    def put_stream(self, key: str, stream: IO[bytes]) -> None: ...
    def open(self, key: str) -> IO[bytes]: ...
    def get_file(self, key: str, dest: Path) -> None: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> int: ...


def _norm(key: str) -> str:
    key = key.strip("/")
    if not key or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"bad store key {key!r}")
    return key


def _prefix(prefix: str) -> str:
    return _norm(prefix) + "/"


# --- trees -----------------------------------------------------------------------------------


def put_tree(store: Store, prefix: str, folder: Path) -> None:
    """Upload every file under `folder` to `prefix/…`, then the completion marker."""
    prefix = _norm(prefix)
    folder = Path(folder)
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != COMPLETE:
            store.put_file(f"{prefix}/{path.relative_to(folder).as_posix()}", path)
    store.put_stream(f"{prefix}/{COMPLETE}", _empty())


def tree_complete(store: Store, prefix: str) -> bool:
    return store.exists(f"{_norm(prefix)}/{COMPLETE}")


def get_tree(store: Store, prefix: str, dest: Path) -> None:
    """Download `prefix/…` into `dest` (which must not exist yet; the caller renames it)."""
    prefix = _prefix(prefix)
    for key in store.list(prefix):
        store.get_file(key, dest / key[len(prefix) :])


def _empty() -> IO[bytes]:
    import io

    return io.BytesIO(b"")


# --- local filesystem ------------------------------------------------------------------------


class LocalStore:
    """Keys are paths under `root` (DATA_DIR): the embedded setup, one host, no copies."""

    remote = False

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / _norm(key)

    def put_file(self, key: str, path: Path) -> None:
        dest = self.path(key)
        if dest.exists() and os.path.samefile(dest, path):
            return  # already in place: the working layout is the store
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
        shutil.copyfile(path, tmp)
        tmp.replace(dest)

    def put_stream(self, key: str, stream: IO[bytes]) -> None:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
        with open(tmp, "wb") as out:
            shutil.copyfileobj(stream, out, PART)
        tmp.replace(dest)

    def open(self, key: str) -> IO[bytes]:
        return open(self.path(key), "rb")

    def get_file(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path(key), dest)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def list(self, prefix: str) -> list[str]:
        base = self.root / _norm(prefix)
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        base = self.root / _norm(prefix)
        n = len(self.list(prefix))
        shutil.rmtree(base, ignore_errors=True)
        return n


# --- S3 ----------------------------------------------------------------------------------------


class S3Store:
    """Any S3-compatible object store (AWS S3, MinIO, Ceph, moto's server in the tests)."""

    remote = True

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        prefix: str = "",
        client: Any = None,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region or None,
            aws_access_key_id=access_key or None,
            aws_secret_access_key=secret_key or None,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )
        # Parts of PART bytes, a few at a time: a 10 GiB checkpoint never sits in memory.
        self.transfer = TransferConfig(
            multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=4
        )

    def _k(self, key: str) -> str:
        return self.prefix + _norm(key)

    def _unk(self, key: str) -> str:
        return key[len(self.prefix) :]

    def create_bucket(self) -> None:
        with contextlib.suppress(self.client.exceptions.BucketAlreadyOwnedByYou):
            self.client.create_bucket(Bucket=self.bucket)

    def put_file(self, key: str, path: Path) -> None:
        self.client.upload_file(str(path), self.bucket, self._k(key), Config=self.transfer)

    def put_stream(self, key: str, stream: IO[bytes]) -> None:
        self.client.upload_fileobj(stream, self.bucket, self._k(key), Config=self.transfer)

    def open(self, key: str) -> IO[bytes]:
        """A streaming body: read it in chunks (it is never buffered whole)."""
        body: IO[bytes] = self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"]
        return body

    def get_file(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
        try:
            self.client.download_file(self.bucket, self._k(key), str(tmp), Config=self.transfer)
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._k(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def size(self, key: str) -> int:
        head = self.client.head_object(Bucket=self.bucket, Key=self._k(key))
        return int(head["ContentLength"])

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._k(prefix) + "/"
        )
        for page in pages:
            keys += [self._unk(o["Key"]) for o in page.get("Contents", [])]
        return sorted(keys)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._k(key))

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for i in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys at most
            batch = [{"Key": self._k(k)} for k in keys[i : i + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})
        return len(keys)


# --- the bounded local cache --------------------------------------------------------------------


class Cache:
    """A host's local copies of remote keys and trees, LRU-evicted past `max_bytes`.

    Layout: `root/data/<key>` (the file or tree itself, at its key's path, so a cached path
    maps back to its key), `root/meta/<hash>.json` (key, size; its mtime is the last use),
    `root/locks/<hash>` (flock: exclusive while downloading or evicting, shared while held).
    """

    def __init__(self, store: Store, root: Path | str, max_bytes: int) -> None:
        self.store = store
        self.root = Path(root)
        self.max_bytes = max_bytes
        for sub in ("data", "meta", "locks", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def _id(self, key: str) -> str:
        return hashlib.sha1(_norm(key).encode()).hexdigest()

    def path_of(self, key: str) -> Path:
        return self.root / "data" / _norm(key)

    def key_of(self, path: Path | str) -> str | None:
        """The key of a path inside this cache (None: not one of ours)."""
        try:
            return Path(path).resolve().relative_to((self.root / "data").resolve()).as_posix()
        except ValueError:
            return None

    @contextlib.contextmanager
    def _lock(self, key: str, mode: int) -> Iterator[None]:
        with open(self.root / "locks" / self._id(key), "a+b") as fh:
            fcntl.flock(fh, mode)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _touch(self, key: str, size: int | None = None) -> None:
        meta = self.root / "meta" / f"{self._id(key)}.json"
        if size is not None:
            tmp = meta.with_suffix(f".{uuid.uuid4().hex}")
            tmp.write_text(json.dumps({"key": _norm(key), "size": size}))
            tmp.replace(meta)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.utime(meta)

    def fetch(self, key: str, *, tree: bool = False) -> Path:
        """The local path of `key` (a file) or of the tree under it, downloading it once."""
        dest = self.path_of(key)
        with self._lock(key, fcntl.LOCK_EX):
            if dest.exists():
                self._touch(key)
                return dest
            if tree and not tree_complete(self.store, key):
                raise FileNotFoundError(f"no complete tree at {key!r} in the store")
            tmp = self.root / "tmp" / uuid.uuid4().hex
            try:
                if tree:
                    tmp.mkdir()
                    get_tree(self.store, key, tmp)
                    size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
                else:
                    self.store.get_file(key, tmp)
                    size = tmp.stat().st_size
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp.rename(dest)  # atomic: another process sees all of it or none
            finally:
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink(missing_ok=True)
            self._touch(key, size)
        self.evict(keep=key)
        return dest

    @contextlib.contextmanager
    def hold(self, key: str, *, tree: bool = False) -> Iterator[Path]:
        """`fetch`, then keep the entry from eviction until the block ends."""
        path = self.fetch(key, tree=tree)
        with self._lock(key, fcntl.LOCK_SH):
            if not path.exists():  # evicted between the fetch and the lock: fetch again
                path = self.fetch(key, tree=tree)
            yield path

    def entries(self) -> list[tuple[float, str, int]]:
        """(last use, key, size) of every cached entry, least recently used first."""
        found = []
        for meta in (self.root / "meta").glob("*.json"):
            try:
                data = json.loads(meta.read_text())
                found.append((meta.stat().st_mtime, data["key"], int(data["size"])))
            except (OSError, ValueError, KeyError):
                continue
        return sorted(found)

    def size(self) -> int:
        return sum(size for _, _, size in self.entries())

    def evict(self, keep: str | None = None) -> list[str]:
        """Drop least recently used entries until the cache fits `max_bytes`; entries held
        (or being downloaded) by any process are skipped. Returns the keys dropped."""
        entries = self.entries()
        total = sum(size for _, _, size in entries)
        dropped = []
        for _, key, size in entries:
            if total <= self.max_bytes:
                break
            if key == keep:
                continue
            with open(self.root / "locks" / self._id(key), "a+b") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # in use somewhere: try the next one
                try:
                    self.drop(key, locked=True)
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
            total -= size
            dropped.append(key)
        return dropped

    def drop(self, key: str, *, locked: bool = False) -> None:
        """Forget a cached entry (after its objects were deleted from the store, say)."""
        if not locked:
            with self._lock(key, fcntl.LOCK_EX):
                return self.drop(key, locked=True)
        path = self.path_of(key)
        if path.exists():
            # Rename first: no reader sees a half-deleted tree under the key's name.
            gone = self.root / "tmp" / f"gone-{uuid.uuid4().hex}"
            path.rename(gone)
            if gone.is_dir():
                shutil.rmtree(gone, ignore_errors=True)
            else:
                gone.unlink(missing_ok=True)
        (self.root / "meta" / f"{self._id(key)}.json").unlink(missing_ok=True)
        return None
