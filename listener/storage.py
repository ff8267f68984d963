"""Durable file placement under the storage root: fsync, atomic rename, fsync of the directory.

A received data set is first written to a temporary file under ``<root>/tmp``, so the final name
appears only once the whole file is on disk: a crash leaves at most a temporary file, which
:meth:`InstanceStore.clean_tmp` removes at the next start.

Temporary files are written with ``O_DIRECT`` where the file system takes it: the bytes go from one
page-aligned block at a time to the disk, not through the page cache. On the development VM (ext4, 300
new 0.5 MB CT files each way) a write and fsync through the page cache took 1.8 ms of wall time and
1.5 ms of CPU, the largest single cost of a C-STORE; written directly and fsynced, 0.55 ms and
0.23 ms (``triage bench ingest`` prints the direct write beside storescp's plain one). The fsync
still follows: it commits the file's size and blocks and flushes the disk's cache. A file system
that refuses ``O_DIRECT`` (EINVAL) is written through the page cache instead, decided once per
store. Workers read the files back through the cache: :meth:`InstanceStore.prefetch` has the kernel
start those reads for a whole series at once.
"""

from __future__ import annotations

import array
import errno
import fcntl
import logging
import mmap
import os
import struct
import uuid
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from listener.recent import Recent
from listener.uids import check_uid
from ops.logs import event

log = logging.getLogger("triage.listener.storage")

#: O_DIRECT needs the buffer's address, the length and the file offset aligned to the device's
#: logical block size; 4096 is a multiple of every one in use (512 and 4096).
DIRECT_IO_ALIGNMENT = 4096
#: Bytes per block written to a temporary file (a multiple of the alignment). A C-STORE's data set is
#: written a block at a time while the rest of it is still arriving (``listener.streaming``), so what
#: is left to write once its last PDU is in is at most one block and the fsync.
TEMP_BLOCK = 128 * 1024
#: Free blocks kept for reuse (anonymous mmap memory: page-aligned by construction).
_POOL_KEEP = 64
_free_blocks: deque[mmap.mmap] = deque()  # append and pop are atomic: no lock needed
#: Series folders a store remembers placing into (the oldest forgotten first).
_KNOWN_FOLDERS_MAX = 4096
#: Most blocks in one vectored write (the kernel refuses more with EINVAL).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if 0 < os.sysconf("SC_IOV_MAX") <= 1024 else 1024


def _take_block() -> mmap.mmap:
    try:
        return _free_blocks.pop()
    except IndexError:
        return mmap.mmap(-1, TEMP_BLOCK)


def _give_block(buffer: mmap.mmap) -> None:
    if len(_free_blocks) < _POOL_KEEP:
        _free_blocks.append(buffer)


class Block(NamedTuple):
    """Bytes staged for one write at ``offset``: ``length`` bytes of ``buffer`` (whole pages when direct)."""

    buffer: mmap.mmap
    offset: int
    length: int


class TempFile:
    """A new file under ``<root>/tmp``, filled a whole block at a time as its bytes come, then fsynced.

    Two sides, so that a received data set can reach the disk while the rest of it is still arriving:
    :meth:`stage` copies bytes into page-aligned blocks (the receiving thread, in order) and returns
    those that are full; :meth:`open` creates the file and :meth:`write` writes whatever blocks are
    ready in one call (an I/O thread: creating a file costs the receiving thread 0.4 ms on ext4; each
    block knows its offset); :meth:`stage_end` gives the last, partly filled block and :meth:`finish`
    writes what is left, fsyncs and closes. Errors
    (ENOSPC, ...) propagate from :meth:`write` and :meth:`finish`; the caller then discards it (:meth:`discard`).

    The file is opened with ``O_DIRECT`` where the store's file system takes it. One that refuses it at
    open or at the first write (EINVAL) is written through the page cache from then on, decided once
    per store.
    """

    def __init__(self, store: InstanceStore) -> None:
        self.path = store.tmp_dir / f"{uuid.uuid4().hex}.part"
        self._store = store
        self._direct = store.direct_io
        self._fd = -1
        self.size = 0
        self._block: mmap.mmap | None = None
        self._filled = 0
        #: the bytes after the last whole page (direct only): :meth:`finish` writes them through the cache
        self._tail = b""

    def open(self) -> None:
        """Create the file (never an existing one): before the first :meth:`write`, on the I/O side."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        if self._direct:
            try:  # the mode follows the umask, as with open()
                self._fd = os.open(self.path, flags | os.O_DIRECT, 0o666)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.path.unlink(missing_ok=True)  # some file systems create it, then refuse
                self._direct = False
                self._store.refuse_direct_io()
        self._fd = os.open(self.path, flags, 0o666)

    def stage(self, data: bytes | bytearray | memoryview, *, eager: bool = False) -> list[Block]:
        """Copy ``data`` after what was staged before; return the blocks ready to write, in order.

        ``eager`` also returns the whole pages of a partly filled block (the rest, less than a page, is
        carried into a new one): a receiver staging each fragment as it arrives then has all but the
        last fragment on its way to the disk when that one comes, instead of the block it straddles.
        """
        source = memoryview(data).cast("B")
        full: list[Block] = []
        while source:
            if self._block is None:
                self._block = _take_block()
                self._filled = 0
            take = min(len(source), TEMP_BLOCK - self._filled)
            self._block[self._filled:self._filled + take] = source[:take]
            self._filled += take
            self.size += take
            source = source[take:]
            if self._filled == TEMP_BLOCK:
                full.append(Block(self._block, self.size - TEMP_BLOCK, TEMP_BLOCK))
                self._block = None
        if eager and self._block is not None and self._filled >= DIRECT_IO_ALIGNMENT:
            pages = self._filled // DIRECT_IO_ALIGNMENT * DIRECT_IO_ALIGNMENT
            block, rest = self._block, self._filled - pages
            self._block = _take_block()
            self._block[:rest] = block[pages:self._filled]
            full.append(Block(block, self.size - self._filled, pages))
            self._filled = rest
        return full

    def write(self, *blocks: Block) -> None:
        """Write staged blocks, consecutive and in order, with as few system calls as the kernel allows
        (one per ``IOV_MAX`` blocks); their buffers go back to the pool whatever happens.

        One call for whatever is ready, not one per block: a direct write's cost here is mostly per
        call (one 516 KiB write took 0.29 ms on the development VM, four of 128 KiB 0.53 ms, eight of
        64 KiB 0.8 ms), so a writer that fell behind the network catches up in one call.
        """
        try:
            for first in range(0, len(blocks), _IOV_MAX):
                self._write_consecutive(blocks[first:first + _IOV_MAX])
        finally:
            for block in blocks:
                _give_block(block.buffer)

    def _write_consecutive(self, blocks: tuple[Block, ...]) -> None:
        offset = end = blocks[0].offset
        views = []
        for block in blocks:
            if block.offset != end:
                raise ValueError(f"staged blocks out of order: one at {block.offset}, expected {end}")
            views.append(memoryview(block.buffer)[:block.length])  # pooled buffers are never closed
            end += block.length
        written = 0
        while offset + written < end:
            try:
                count = os.pwritev(self._fd, _after(views, written), offset + written)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self._direct:
                    raise
                self._stop_direct_io()  # taken at open, refused at the write (some file systems)
                continue
            if count <= 0:
                raise OSError(errno.EIO, f"write of {end - offset} bytes stopped after {written}")
            written += count

    def stage_end(self) -> list[Block]:
        """The last, partly filled block; when direct, only its whole pages (:meth:`finish` writes the
        bytes after them). Nothing when the staged bytes ended on a block boundary."""
        if self._block is None:
            return []
        block, self._block = self._block, None
        length = self._filled
        if self._direct:
            length = length // DIRECT_IO_ALIGNMENT * DIRECT_IO_ALIGNMENT
            self._tail = bytes(block[length:self._filled])
            if not length:
                _give_block(block)
                return []
        return [Block(block, self.size - self._filled, length)]

    def finish(self) -> Path:
        """Write what is left, fsync and close; the file's path.

        The bytes after the last whole page are written through the page cache, so the file is never
        longer than its bytes: a direct write must cover whole pages, and cutting its padding off
        again (ftruncate) cost 0.06-0.07 ms on the development VM (0.2 ms in a listener under strace)
        on the path the sender waits on; written this way, last write to fsync took 0.18-0.21 ms
        instead of 0.26-0.29 (200 new CT-slice files each way).
        """
        self.write(*self.stage_end())
        if self._tail:
            self._write_tail()
        os.fsync(self._fd)
        self._close()
        return self.path

    def _write_tail(self) -> None:
        tail, self._tail = self._tail, b""
        if self._direct:  # nothing is written to this file after the tail: the flag stays off
            _clear_direct_flag(self._fd)
        view, offset = memoryview(tail), self.size - len(tail)
        while view:
            count = os.pwrite(self._fd, view, offset)
            if count <= 0:
                raise OSError(errno.EIO, f"write stopped with {len(view)} bytes left")
            view, offset = view[count:], offset + count

    def discard(self) -> None:
        """Close and remove the file (nothing is left under tmp/)."""
        if self._block is not None:
            _give_block(self._block)
            self._block = None
        self._close()
        self.path.unlink(missing_ok=True)

    @staticmethod
    def drop(block: Block) -> None:
        """Give back a staged block that will not be written."""
        _give_block(block.buffer)

    def _close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def _stop_direct_io(self) -> None:
        _clear_direct_flag(self._fd)
        self._direct = False
        self._store.refuse_direct_io()


class InstanceStore:
    """The files of stored instances: ``<root>/<study>/<series>/<sop instance>.dcm``."""

    def __init__(self, root: Path, *, direct_io: bool = True) -> None:
        self.root = root.resolve()
        self.tmp_dir = self.root / "tmp"
        self.root.mkdir(parents=True, exist_ok=True)
        mark_top_of_hierarchy(self.root)  # before tmp/ and the study folders are made below it
        self.tmp_dir.mkdir(exist_ok=True)
        #: whether temporary files are written with O_DIRECT; turned off for good at the first EINVAL
        self.direct_io = direct_io and hasattr(os, "O_DIRECT")
        #: series folders this store has placed into: they exist and their entries are fsynced, so placing
        #: into one again skips the walk up the tree (one removed by hand is made again at the rename)
        self._known_folders: Recent[Path, None] = Recent(_KNOWN_FOLDERS_MAX)

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

    def prefetch(self, paths: Iterable[Path]) -> None:
        """Ask the kernel to start reading these stored files into the page cache, all at once.

        Instances are written around the page cache (O_DIRECT), so the worker's first reads of a study
        go to the disk. Read one by one, a 0.5 MB CT slice then took 0.4 ms longer to decode than from
        the cache; advised first (``POSIX_FADV_WILLNEED``, about 10 us of the caller's time per file),
        the reads overlap and 0.15 ms is left. A file that cannot be opened is skipped: its reader
        reports it. (Headers alone are not worth it: reading one costs the same from the disk.)
        """
        if not hasattr(os, "posix_fadvise"):
            return
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass  # a hint only
            finally:
                os.close(fd)

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
        tmp = TempFile(self)
        try:
            tmp.open()
            tmp.write(*tmp.stage(data))
            return tmp.finish()
        except BaseException:
            tmp.discard()
            raise

    def refuse_direct_io(self) -> None:
        """Write through the page cache from now on: this file system refuses O_DIRECT (said once)."""
        if self.direct_io:
            self.direct_io = False
            event(log, "storage.direct_io.refused", logging.WARNING, folder=str(self.tmp_dir),
                  hint="this file system refuses O_DIRECT: instances are written through the page "
                       "cache, which costs more CPU per C-STORE")

    def place(self, tmp: Path, rel: Path) -> None:
        """Second half of :meth:`write`: rename a fsynced temporary file to ``rel``, fsync its folder (and,
        the first time this store places into that folder, the folders above it: :meth:`_make_dirs`)."""
        try:
            final = self.root / rel
            folder = final.parent
            known = folder in self._known_folders
            if not known:
                self._make_dirs(folder)
            try:
                os.replace(tmp, final)
            except FileNotFoundError:
                if not tmp.exists():
                    raise
                self._make_dirs(folder)  # the folder went away since it was made (removed by hand)
                os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(folder)
        if not known:  # the lock is taken once per series folder, not per instance
            self._known_folders.put(folder, None)

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
        """Remove temporary files left by a crash; returns how many. Call before serving only.

        The emptied folder is made anew, so that the file system places it as it places a new folder
        below the root now: a store made before the root was marked (:func:`mark_top_of_hierarchy`)
        gets its ``tmp/`` where a marked root's new folders go.
        """
        removed = 0
        for path in self.tmp_dir.iterdir():
            if path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
        try:
            self.tmp_dir.rmdir()
        except OSError:
            return removed  # something other than a file in it: leave the folder where it is
        self.tmp_dir.mkdir()
        return removed

    def _make_dirs(self, directory: Path) -> None:
        """Create the study and series folders where missing; fsync each one's parent, made here or not.

        A folder found existing is fsynced into its parent too: another association may have made it a
        moment ago and not yet fsynced its entry, and an instance placed in it must not be answered
        before that entry is durable. Runs once per series folder a store has not placed into yet.
        """
        chain: list[Path] = []
        current = directory
        while current != self.root and current != current.parent:
            chain.append(current)
            current = current.parent
        for path in reversed(chain):
            try:
                path.mkdir()
            except FileExistsError:
                pass
            _fsync_dir(path.parent)


#: ext2/3/4's "top of directory hierarchies" attribute (``chattr +T``) and the ioctls that read and set
#: a file's attributes (linux/fs.h: _IOR/_IOW('f', 1/2, long), for the x86 and Arm encodings)
_FS_TOPDIR_FL = 0x00020000
_LONG_SIZE = struct.calcsize("l")
_FS_IOC_GETFLAGS = 2 << 30 | _LONG_SIZE << 16 | ord("f") << 8 | 1
_FS_IOC_SETFLAGS = 1 << 30 | _LONG_SIZE << 16 | ord("f") << 8 | 2


def mark_top_of_hierarchy(directory: Path) -> bool:
    """Give ``directory`` the ext2/3/4 attribute that makes it the top of a directory hierarchy
    (``chattr +T``); whether it has it now. Best effort: other file systems have no such attribute.

    ext4 creates a file's inode near its folder's, and places a new folder near its parent's unless
    the parent is the root of the file system or has this attribute: then it spreads new folders
    over the disk, to where inodes are free. Every instance is created in ``tmp/``, so where ``tmp/``
    lies decides what each C-STORE's create costs. On the development VM (ext4, 252 GB, the system
    installed at its start), files created under a folder in ``/tmp`` cost 0.16-0.9 ms of CPU each,
    the kernel searching for a free inode, against 12 us under a folder with this attribute (500
    creates each, renamed into another folder as the listener does).
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
        if not flags[0] & _FS_TOPDIR_FL:
            flags[0] |= _FS_TOPDIR_FL
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, flags, False)
        return True
    except OSError:  # ENOTTY, EOPNOTSUPP, EPERM: not ext2/3/4, or not ours to change
        return False
    finally:
        os.close(fd)


def _clear_direct_flag(fd: int) -> None:
    """Have ``fd``'s next writes go through the page cache."""
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)


def _after(views: list[memoryview], skip: int) -> list[memoryview]:
    """``views`` without their first ``skip`` bytes (what is left after a short write)."""
    for index, view in enumerate(views):
        if skip < len(view):
            return [view[skip:], *views[index + 1:]]
        skip -= len(view)
    return []


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
