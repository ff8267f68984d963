"""Durable file placement under the storage root: fsync, atomic rename, fsync of the directory.

A received data set is first written to a temporary file under ``<root>/tmp``, so the final name
appears only once the whole file is on disk: a crash leaves at most a temporary file, which
:meth:`InstanceStore.clean_tmp` removes at the next start.
"""

from __future__ import annotations

import os
import uuid
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
        """Path of an instance relative to the root; the UIDs are checked again here on purpose.

        A checked UID is digits and single dots, starting with a digit: no separator, never "." or
        "..", so the path is three plain names below the root by construction. The check below is
        lexical on purpose: ``resolve()`` would stat every folder up from the root on each C-STORE.
        """
        parts = (
            check_uid(study_uid, "StudyInstanceUID"),
            check_uid(series_uid, "SeriesInstanceUID"),
            check_uid(sop_instance_uid, "SOPInstanceUID") + ".dcm",
        )
        if any(part in ("", ".", "..") or os.sep in part or (os.altsep and os.altsep in part) for part in parts):
            raise ValueError(f"refusing a storage path outside the storage root: {'/'.join(parts)}")
        return Path(*parts)

    def absolute(self, rel: Path | str) -> Path:
        full = (self.root / rel).resolve()
        if not full.is_relative_to(self.root):
            raise ValueError(f"refusing a storage path outside the storage root: {rel}")
        return full

    def exists(self, rel: Path | str) -> bool:
        return self.absolute(rel).is_file()

    def write(self, data: bytes, rel: Path) -> int:
        """Write ``data`` durably at ``rel``; return its size. Nothing is left behind on failure.

        The bytes go to a unique temporary file, are fsynced, and only then renamed over ``rel``
        (atomic: a reader sees the old file or the new one, never a half); the directory is fsynced
        so the rename itself survives a power cut. ENOSPC and other OS errors propagate after the
        temporary file is removed.
        """
        self.place(self.write_temp(data), rel)
        return len(data)

    def write_temp(self, data: bytes | memoryview) -> Path:
        """First half of :meth:`write`: the bytes in a new temporary file, fsynced; its path.

        Touches nothing outside ``<root>/tmp``; on failure the temporary file is removed and the
        error (ENOSPC, ...) propagates. Follow with :meth:`place` or :meth:`discard`.
        """
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        try:
            with open(tmp, "xb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def place(self, tmp: Path, rel: Path) -> None:
        """Second half of :meth:`write`: rename a fsynced temporary file to ``rel``, fsync its folder."""
        try:
            final = self.root / rel
            self._make_dirs(final.parent)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)

    def discard(self, tmp: Path) -> None:
        """Remove a temporary file that will not be placed (no fsync: it never had a final name)."""
        tmp.unlink(missing_ok=True)

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
