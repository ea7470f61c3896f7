"""The artifact store against a real S3 server (moto's, its own process, spoken to over HTTP
by boto3), and the local store and cache on real disks."""

from __future__ import annotations

import fcntl
import hashlib
import multiprocessing
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from common.store import COMPLETE, PART, Cache, LocalStore, S3Store, put_tree, tree_complete


@pytest.fixture
def s3(s3_server: Any) -> S3Store:
    bucket = s3_server.new_bucket()
    env = s3_server.env(bucket)
    return S3Store(
        bucket,
        endpoint_url=env["S3_ENDPOINT_URL"],
        region="us-east-1",
        access_key="test",
        secret_key="test",  # noqa: S106
    )


def _random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            out.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def _sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def test_s3_put_get_stream_list_delete(s3: S3Store, tmp_path: Path) -> None:
    src = tmp_path / "blob.bin"
    digest = _random_file(src, 3 * 1024 * 1024 + 17)
    s3.put_file("jobs/j1/a.bin", src)
    assert s3.exists("jobs/j1/a.bin")
    assert not s3.exists("jobs/j1/missing.bin")
    s3.get_file("jobs/j1/a.bin", tmp_path / "back.bin")
    assert _sha(tmp_path / "back.bin") == digest
    # A streamed read, chunk by chunk.
    body = s3.open("jobs/j1/a.bin")
    h = hashlib.sha256()
    while chunk := body.read(64 * 1024):
        h.update(chunk)
    assert h.hexdigest() == digest
    with open(src, "rb") as fh:
        s3.put_stream("jobs/j1/b.bin", fh)
    assert s3.list("jobs/j1") == ["jobs/j1/a.bin", "jobs/j1/b.bin"]
    assert s3.list("jobs/j") == []  # a prefix is a folder, not a string prefix
    s3.delete("jobs/j1/a.bin")
    assert s3.list("jobs/j1") == ["jobs/j1/b.bin"]
    assert s3.delete_prefix("jobs/j1") == 1
    assert s3.list("jobs/j1") == []


def test_s3_big_files_go_in_parts_and_never_whole_in_memory(s3: S3Store, tmp_path: Path) -> None:
    # Memory is bounded by the parts in flight (max_concurrency of them, plus the one being read
    # and slack), whatever the file's size: the file is bigger than that bound, so a transfer that
    # held the whole file would fail the check however the threads happen to overlap.
    bound = (s3.transfer.max_concurrency + 2) * PART
    parts = bound // PART + 3
    size = (parts - 1) * PART + 123
    src = tmp_path / "big.bin"
    digest = _random_file(src, size)
    tracemalloc.start()
    try:
        s3.put_file("exports/big.bin", src)
        s3.get_file("exports/big.bin", tmp_path / "big-back.bin")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert _sha(tmp_path / "big-back.bin") == digest
    head = s3.client.head_object(Bucket=s3.bucket, Key="exports/big.bin")
    assert head["ETag"].strip('"').endswith(f"-{parts}")  # a multipart upload
    assert peak < bound < size, (peak, bound, size)


def test_trees_are_complete_only_once_their_marker_is_written(s3: S3Store, tmp_path: Path) -> None:
    tree = tmp_path / "adapter"
    (tree / "sub").mkdir(parents=True)
    (tree / "adapter_config.json").write_text("{}")
    (tree / "sub" / "w.bin").write_bytes(b"x" * 100)
    s3.put_file("models/1/m/adapter_config.json", tree / "adapter_config.json")
    assert not tree_complete(s3, "models/1/m")  # files without the marker: being uploaded
    put_tree(s3, "models/1/m", tree)
    assert tree_complete(s3, "models/1/m")
    assert s3.list("models/1/m") == [
        f"models/1/m/{COMPLETE}",
        "models/1/m/adapter_config.json",
        "models/1/m/sub/w.bin",
    ]


def test_the_cache_fetches_once_and_evicts_least_recently_used(s3: S3Store, tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        tree = tmp_path / "src" / name
        tree.mkdir(parents=True)
        (tree / "w.bin").write_bytes(os.urandom(400))
        put_tree(s3, f"models/1/{name}", tree)
    cache = Cache(s3, tmp_path / "cache", max_bytes=1000)  # room for two of the three
    a = cache.fetch("models/1/a", tree=True)
    assert (a / "w.bin").read_bytes() == (tmp_path / "src/a/w.bin").read_bytes()
    assert cache.key_of(a) == "models/1/a"
    cache.fetch("models/1/b", tree=True)
    os.utime(cache.root / "meta" / f"{cache._id('models/1/a')}.json", (1, 1))  # a: oldest use
    cache.fetch("models/1/c", tree=True)  # over budget: a goes
    assert not a.exists()
    assert [k for _, k, _ in cache.entries()] == ["models/1/b", "models/1/c"]
    assert cache.size() <= 1000
    # Fetched again on demand.
    assert (cache.fetch("models/1/a", tree=True) / "w.bin").is_file()
    with pytest.raises(FileNotFoundError):
        cache.fetch("models/1/none", tree=True)


def test_eviction_skips_entries_another_process_holds(s3: S3Store, tmp_path: Path) -> None:
    for name in ("a", "b"):
        tree = tmp_path / "src" / name
        tree.mkdir(parents=True)
        (tree / "w.bin").write_bytes(os.urandom(800))
        put_tree(s3, f"models/1/{name}", tree)
    cache = Cache(s3, tmp_path / "cache", max_bytes=1000)
    a = cache.fetch("models/1/a", tree=True)
    # Another process holds `a` (a shared flock on its lock file, as Cache.hold takes).
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    lock = cache.root / "locks" / cache._id("models/1/a")

    def holder() -> None:
        with open(lock, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH)
            ready.set()
            release.wait(30)

    proc = multiprocessing.get_context("fork").Process(target=holder)
    proc.start()
    try:
        assert ready.wait(30)
        cache.fetch("models/1/b", tree=True)  # over budget, but `a` is in use
        assert a.exists()
    finally:
        release.set()
        proc.join(30)
    # Released: the next eviction takes it.
    assert cache.evict() == ["models/1/a"]
    assert not a.exists() and cache.size() <= 1000


def test_concurrent_fetches_of_one_key_download_it_once(s3: S3Store, tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    digest = _random_file(src, 2 * 1024 * 1024)
    s3.put_file("media/files/f", src)
    root = tmp_path / "cache"
    Cache(s3, root, max_bytes=1 << 30)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        paths = pool.starmap(_fetch_in_child, [(s3.bucket, s3.client.meta.endpoint_url, root)] * 4)
    assert len(set(paths)) == 1
    assert _sha(Path(paths[0])) == digest
    assert list((root / "tmp").iterdir()) == []  # no leftovers from a race


def _fetch_in_child(bucket: str, endpoint: str, root: Path) -> str:
    store = S3Store(
        bucket, endpoint_url=endpoint, region="us-east-1", access_key="t", secret_key="t"
    )
    return str(Cache(store, root, max_bytes=1 << 30).fetch("media/files/f"))


def test_the_local_store_is_data_dir_itself(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    f = tmp_path / "jobs" / "j" / "x.bin"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"abc")
    store.put_file("jobs/j/x.bin", f)  # already in place: a no-op, not a copy over itself
    assert f.read_bytes() == b"abc"
    put_tree(store, "jobs/j", f.parent)
    assert tree_complete(store, "jobs/j")
    assert store.list("jobs/j") == [f"jobs/j/{COMPLETE}", "jobs/j/x.bin"]
    assert store.open("jobs/j/x.bin").read() == b"abc"
    with pytest.raises(ValueError):
        store.path("../etc/passwd")
    assert store.delete_prefix("jobs/j") == 2
    assert not f.exists()
