"""Durable placement writes exactly the received bytes, directly to the disk or, where the file
system refuses O_DIRECT, through the page cache."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from listener import storage
from listener.storage import DIRECT_IO_ALIGNMENT, TEMP_BLOCK, InstanceStore, TempFile, mark_top_of_hierarchy
from tests.mounts import mounted

# around every boundary the direct writer splits at (whole pages direct, the rest through the cache)
SIZES = [0, 1, DIRECT_IO_ALIGNMENT - 1, DIRECT_IO_ALIGNMENT, DIRECT_IO_ALIGNMENT + 1, 530_000,
         TEMP_BLOCK - 1, TEMP_BLOCK, TEMP_BLOCK + DIRECT_IO_ALIGNMENT + 3]


@pytest.fixture
def ramfs(tmp_path: Path) -> Iterator[Path]:
    """A ramfs, a real file system that refuses O_DIRECT at open (root only; skipped elsewhere)."""
    with mounted("ramfs", tmp_path / "ramfs") as mount_point:
        yield mount_point


@pytest.mark.parametrize("direct_io", [True, False], ids=["direct", "page-cache"])
def test_placed_files_hold_exactly_the_bytes_written(tmp_path: Path, direct_io: bool) -> None:
    store = InstanceStore(tmp_path / "store", direct_io=direct_io)
    for size in SIZES:
        data = os.urandom(size)
        rel = Path("1.2.3") / "1.2.3.4" / f"1.2.3.4.{size}.dcm"
        assert store.write(data, rel) == size
        assert (store.root / rel).read_bytes() == data, size
    assert store.direct_io is (direct_io and hasattr(os, "O_DIRECT"))  # tmp_path's file system takes it
    assert not any(store.tmp_dir.iterdir())


def test_direct_files_are_never_written_past_their_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bytes after the last whole page go through the page cache: no padding to cut off afterwards."""
    store = InstanceStore(tmp_path / "store")

    def no_truncate(fd: int, length: int) -> None:
        raise AssertionError(f"ftruncate({length}): the file was written past its end")

    monkeypatch.setattr(os, "ftruncate", no_truncate)
    for size in SIZES:
        data = os.urandom(size)
        tmp = TempFile(store)
        tmp.open()
        # as a stream stages it: fragment by fragment, whole pages written as they fill
        for start in range(0, size, 40_000):
            tmp.write(*tmp.stage(data[start:start + 40_000], eager=True))
        path = tmp.finish()
        assert path.read_bytes() == data, size
        store.discard(path)
    assert store.direct_io


def test_memoryview_of_a_larger_buffer_is_written_as_its_own_bytes(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "store")
    backing = bytearray(os.urandom(TEMP_BLOCK + 10_000))
    view = memoryview(backing)[5_000:5_000 + TEMP_BLOCK + 17]
    tmp = store.write_temp(view)
    assert tmp.read_bytes() == bytes(view)
    store.discard(tmp)


def test_file_mode_follows_the_umask_as_a_plain_open_would(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "store")
    previous = os.umask(0o027)
    try:
        tmp = store.write_temp(b"DICM")
    finally:
        os.umask(previous)
    assert tmp.stat().st_mode & 0o777 == 0o640
    store.discard(tmp)


def test_a_file_system_refusing_direct_io_is_written_through_the_page_cache(
    ramfs: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    store = InstanceStore(ramfs / "store")
    assert store.direct_io
    data = os.urandom(530_001)
    rel = Path("1.2.3") / "1.2.3.4" / "1.2.3.4.5.dcm"
    with caplog.at_level("WARNING", logger="triage.listener.storage"):
        store.write(data, rel)
        store.write(data, rel.with_name("1.2.3.4.6.dcm"))
    assert store.direct_io is False  # decided once, at the first refusal
    assert (store.root / rel).read_bytes() == data
    assert (store.root / rel.with_name("1.2.3.4.6.dcm")).read_bytes() == data
    refusals = [r for r in caplog.records if "storage.direct_io.refused" in r.getMessage()]
    assert len(refusals) == 1
    assert not any(store.tmp_dir.iterdir())


@pytest.fixture
def fsynced_folders(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every folder the store fsyncs from now on, in order (the real fsync still runs)."""
    folders: list[Path] = []
    real_fsync_dir = storage._fsync_dir

    def recording_fsync_dir(directory: Path) -> None:
        folders.append(Path(directory))
        real_fsync_dir(directory)

    monkeypatch.setattr(storage, "_fsync_dir", recording_fsync_dir)
    return folders


def test_a_series_folder_made_by_someone_else_has_its_entries_fsynced_before_the_first_placement(
        tmp_path: Path, fsynced_folders: list[Path]) -> None:
    """Another association may have made the folders a moment ago, its fsyncs still to come: the
    first instance placed into them fsyncs their parents itself; the next ones only the series folder."""
    store = InstanceStore(tmp_path / "store")
    study, series = store.root / "1.2.3", store.root / "1.2.3" / "1.2.3.4"
    series.mkdir(parents=True)
    store.write(b"first", Path("1.2.3") / "1.2.3.4" / "1.2.3.4.1.dcm")
    assert fsynced_folders == [store.root, study, series]
    fsynced_folders.clear()
    store.write(b"second", Path("1.2.3") / "1.2.3.4" / "1.2.3.4.2.dcm")
    assert fsynced_folders == [series]
    assert (series / "1.2.3.4.1.dcm").read_bytes() == b"first"
    assert (series / "1.2.3.4.2.dcm").read_bytes() == b"second"


def test_a_series_folder_removed_after_placements_is_made_again(tmp_path: Path, fsynced_folders: list[Path]) -> None:
    store = InstanceStore(tmp_path / "store")
    store.write(b"first", Path("1.2.3") / "1.2.3.4" / "1.2.3.4.1.dcm")
    shutil.rmtree(store.root / "1.2.3")  # by hand, behind the store's back
    fsynced_folders.clear()
    store.write(b"second", Path("1.2.3") / "1.2.3.4" / "1.2.3.4.2.dcm")
    series = store.root / "1.2.3" / "1.2.3.4"
    assert (series / "1.2.3.4.2.dcm").read_bytes() == b"second"
    assert fsynced_folders == [store.root, store.root / "1.2.3", series]
    assert not any(store.tmp_dir.iterdir())


def test_a_missing_temporary_file_is_not_mistaken_for_a_missing_folder(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "store")
    store.write(b"first", Path("1.2.3") / "1.2.3.4" / "1.2.3.4.1.dcm")
    with pytest.raises(FileNotFoundError):
        store.place(store.tmp_dir / "gone.part", Path("1.2.3") / "1.2.3.4" / "1.2.3.4.2.dcm")
    assert not (store.root / "1.2.3" / "1.2.3.4" / "1.2.3.4.2.dcm").exists()


def test_prefetch_skips_files_that_are_gone(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "store")
    rel = Path("1.2.3") / "1.2.3.4" / "1.2.3.4.5.dcm"
    store.write(b"DICM" * 1000, rel)
    store.prefetch([store.root / rel, store.root / "1.2.3" / "1.2.3.4" / "gone.dcm", store.root])
    assert (store.root / rel).read_bytes() == b"DICM" * 1000


def test_staged_blocks_are_written_together_and_only_in_order(tmp_path: Path, pwritev_calls: list[int]) -> None:
    store = InstanceStore(tmp_path / "store")
    data = os.urandom(5 * TEMP_BLOCK + 12_345)
    tmp = TempFile(store)
    tmp.open()
    blocks = tmp.stage(data)
    assert len(blocks) == 5
    tmp.write(*blocks)  # five blocks, one call
    assert pwritev_calls == [5]
    assert tmp.finish().read_bytes() == data
    store.discard(tmp.path)

    tmp = TempFile(store)
    tmp.open()
    first, second = tmp.stage(os.urandom(2 * TEMP_BLOCK))
    with pytest.raises(ValueError, match="out of order"):
        tmp.write(second, first)
    tmp.discard()
    assert not any(store.tmp_dir.iterdir())


def test_more_blocks_than_one_call_takes_are_written_in_several(tmp_path: Path, pwritev_calls: list[int],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = InstanceStore(tmp_path / "store")
    monkeypatch.setattr(storage, "_IOV_MAX", 3)
    data = os.urandom(7 * DIRECT_IO_ALIGNMENT + 100)
    tmp = TempFile(store)
    tmp.open()
    pages = [block for i in range(0, len(data), DIRECT_IO_ALIGNMENT)  # one page at a time, as a slow sender's
             for block in tmp.stage(data[i:i + DIRECT_IO_ALIGNMENT], eager=True)]
    assert len(pages) == 7
    tmp.write(*pages)
    assert pwritev_calls == [3, 3, 1]
    assert tmp.finish().read_bytes() == data
    store.discard(tmp.path)


def _attributes(directory: Path) -> str:
    """The ext2/3/4 attribute letters of a folder, as ``lsattr`` prints them."""
    result = subprocess.run(["lsattr", "-d", str(directory)], capture_output=True, text=True, check=False)
    return result.stdout.split()[0] if result.returncode == 0 and result.stdout else ""


def test_the_storage_root_spreads_its_folders_where_the_file_system_can(tmp_path: Path, ramfs: Path) -> None:
    if shutil.which("lsattr") is None or not _attributes(tmp_path):
        pytest.skip("no ext2/3/4 under the test folder (or no lsattr) to read the attribute back")
    store = InstanceStore(tmp_path / "store")
    assert "T" in _attributes(store.root)  # set before tmp/ was made below it
    assert "T" not in _attributes(store.tmp_dir)
    assert mark_top_of_hierarchy(store.root)  # already marked: nothing to change
    assert not mark_top_of_hierarchy(ramfs)  # no such attribute there: said, not raised
    assert InstanceStore(ramfs / "store").tmp_dir.is_dir()


def test_cleaning_the_temporary_folder_makes_it_anew_unless_it_holds_a_folder(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "store")
    (store.tmp_dir / "left-by-a-crash.part").write_bytes(b"DICM")
    assert store.clean_tmp() == 1
    assert store.tmp_dir.is_dir() and not any(store.tmp_dir.iterdir())
    (store.tmp_dir / "not-ours").mkdir()
    assert store.clean_tmp() == 0
    assert (store.tmp_dir / "not-ours").is_dir()
