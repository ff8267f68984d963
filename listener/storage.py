"""Durable file placement under the storage root: fsync, atomic rename, fsync of the directory.

A received dataset is first written to a temporary file under ``<root>/tmp`` (pynetdicom streams it
there), so the final name appears only once the whole file is on disk: a crash leaves at most a
temporary file, which :meth:`InstanceStore.clean_tmp` removes at the next start.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path

from listener.uids import check_uid


class InstanceStore:
    """The files of stored instances: ``<root>/<study>/<series>/<sop instance>.dcm``."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.tmp_dir = self.root / "tmp"
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(exist_ok=True)

    def relative_path(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """Path of an instance relative to the root; the UIDs are checked again here on purpose."""
        rel = Path(
            check_uid(study_uid, "StudyInstanceUID"),
            check_uid(series_uid, "SeriesInstanceUID"),
            check_uid(sop_instance_uid, "SOPInstanceUID") + ".dcm",
        )
        full = (self.root / rel).resolve()
        if not full.is_relative_to(self.root) or full.parent.parent.parent != self.root:
            raise ValueError(f"refusing a storage path outside the storage root: {rel}")
        return rel

    def absolute(self, rel: Path | str) -> Path:
        full = (self.root / rel).resolve()
        if not full.is_relative_to(self.root):
            raise ValueError(f"refusing a storage path outside the storage root: {rel}")
        return full

    def exists(self, rel: Path | str) -> bool:
        return self.absolute(rel).is_file()

    def place(self, tmp_file: Path, rel: Path) -> int:
        """Make ``tmp_file`` durable and move it to ``rel`` atomically; return its size in bytes.

        ``tmp_file`` must be on the same file system (it lives under ``<root>/tmp``). An existing
        file at ``rel`` is replaced atomically, never left half-written.
        """
        fd = os.open(tmp_file, os.O_RDONLY)
        try:
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        final = self.root / rel
        self._make_dirs(final.parent)
        try:
            os.replace(tmp_file, final)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            self._copy_across_devices(tmp_file, final)
        _fsync_dir(final.parent)
        return size

    def _copy_across_devices(self, source: Path, final: Path) -> None:
        """The temporary file lives on another file system: copy it next to ``final`` first."""
        staging = self.tmp_dir / f"{final.name}.{os.getpid()}.{threading.get_ident()}.part"
        try:
            with open(source, "rb") as src, open(staging, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(staging, final)
        finally:
            staging.unlink(missing_ok=True)

    def remove(self, rel: Path | str) -> None:
        """Remove a placed file (its database row could not be committed)."""
        full = self.absolute(rel)
        try:
            full.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(full.parent)

    def clean_tmp(self) -> int:
        """Remove temporary files left by a crash; returns how many. Call before serving only."""
        removed = 0
        for path in self.tmp_dir.iterdir():
            if path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _make_dirs(self, directory: Path) -> None:
        """Create the study and series folders, fsyncing each parent so the new entries persist."""
        missing: list[Path] = []
        current = directory
        while not current.exists() and current != self.root:
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                continue
            _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
