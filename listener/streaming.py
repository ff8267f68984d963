"""A C-STORE's data set written to its temporary file while its PDUs are still arriving.

pynetdicom assembles a received data set in memory and hands it to the handler only once its last
PDU is in; the handler then wrote the whole file and fsynced it before it could answer. On one
association the sender waits for that answer, so the write (1.1-1.7 ms of a 0.5 MB CT slice) was
added to every instance. Here each data set fragment is also staged into a
:class:`listener.storage.TempFile` as it arrives, in the DUL thread, and the association's own I/O
thread writes whatever whole pages are staged, in one call (a disk that fell behind the network
catches up in one write, not one per fragment); the last fragment starts the last write and the
fsync, which then run while pynetdicom decodes the message and the handler checks it. The file itself
is created before the request arrives, as the previous C-STORE of the association is answered:
creating a file can cost more than writing a CT slice directly.

Nothing else changes: the bytes in memory are still what the handler checks, the file still gets its
final name only after that check (``listener.server``), and a write error still reaches the handler
as the OSError it answers 0xA700 to; the DUL thread never raises for it (pynetdicom's own
``STORE_RECV_CHUNKED_DATASET`` writes in that thread and aborts the association on ENOSPC). A message
whose data set began in the same PDU as its command set is not streamed (the handler writes it from
memory, as before): rare, and only its speed differs.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE

from listener.filemeta import file_meta_bytes
from listener.storage import Block, InstanceStore, TempFile
from listener.store_response import PackingDIMSEProvider
from ops.logs import event

log = logging.getLogger("triage.listener")

__all__ = ["InstanceStream", "StreamingDIMSEProvider"]


class InstanceStream:
    """One data set on its way to a temporary file.

    Made ahead of its data set, so that its file is created while the association is idle:
    :meth:`begin` and :meth:`feed` run in the receiving thread and never raise for the file; the
    writes run in order on ``io`` (one thread per association); :meth:`finish` gives the fsynced
    file's path or the first error (as a future: the same one each call), and :meth:`discard` removes
    the file, finished or not.
    The handler either places the finished file or discards it.
    """

    def __init__(self, store: InstanceStore, io: ThreadPoolExecutor) -> None:
        self._io = io
        #: the file meta written before the data set: what the handler needs of it (its length)
        self.prefix_size = 0
        self._error: BaseException | None = None
        self._file = TempFile(store)
        self._finishing: Future[Path] | None = None
        #: staged blocks not yet written, in order: appended here, taken by the I/O thread's flush
        self._pending: deque[Block] = deque()
        self._flush_queued = False
        self.size = 0
        self._submit(self._open)

    def begin(self, prefix: bytes) -> None:
        """Start the data set with ``prefix`` (its file meta); the file may still be opening."""
        self.prefix_size = len(prefix)
        self.feed(prefix)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Stage the next bytes; have the I/O thread write the whole pages staged so far."""
        self.size += len(data)
        if self._error is not None:
            return
        self._pending.extend(self._file.stage(data, eager=True))
        self._queue_flush()

    def finish(self) -> Future[Path]:
        """The temporary file's path once its last block is written and it is fsynced.

        Called in the receiving thread as the last fragment arrives, so that the last write and the
        fsync overlap the decoding of the message and the handler's checks; the handler's own call
        then gets the same future.
        """
        if self._finishing is None:
            if self._error is None:
                self._pending.extend(self._file.stage_end())
            self._finishing = self._run(self._finish)
        return self._finishing

    def discard(self) -> None:
        """Remove the file once the writes queued before are done (the handler wrote it otherwise)."""
        self._run(self._discard)

    def after_writes(self, task: Callable[[], None]) -> Future[None]:
        """Run ``task`` on this stream's I/O thread right after what is queued there (the last write and
        the fsync once :meth:`finish` was called): the handler's rename follows the fsync there, with no
        wait for the handler's thread to wake up, while that thread commits the row."""
        return self._run(task)

    def _run(self, task: Callable[[], Path | None]) -> Future[Any]:
        """``task`` after the writes queued before it; here and now if the association closed."""
        try:
            return self._io.submit(task)
        except RuntimeError:
            done: Future[Any] = Future()
            try:
                done.set_result(task())
            except BaseException as exc:
                done.set_exception(exc)
            return done

    def _queue_flush(self) -> None:
        """One flush in the queue at a time: blocks staged while it waits are written by it, together.

        The flag is cleared by the flush before it takes the blocks, and set here after they were
        added, so no block is left without a flush to write it.
        """
        if not self._flush_queued:
            self._flush_queued = True
            self._submit(self._flush)

    def _submit(self, task: Callable[[], None]) -> bool:
        try:
            self._io.submit(task)
        except RuntimeError as exc:  # the association is closing
            self._error = exc
            self._drop_pending()
            return False
        return True

    def _open(self) -> None:
        try:
            self._file.open()
        except BaseException as exc:  # no inode, no permission: answered by the handler
            self._error = exc

    def _flush(self) -> None:
        """Write every staged block in one call (the I/O thread; most often the one or two of the last
        fragment, several when the disk fell behind the network)."""
        self._flush_queued = False
        if self._error is not None:
            self._drop_pending()
            return
        blocks = []
        while self._pending:
            blocks.append(self._pending.popleft())
        try:
            self._file.write(*blocks)
        except BaseException as exc:  # kept for finish(), which the handler waits on
            self._error = exc

    def _drop_pending(self) -> None:
        while self._pending:
            TempFile.drop(self._pending.popleft())

    def _finish(self) -> Path:
        self._flush()
        if self._error is not None:
            self._discard()
            raise self._error
        try:
            return self._file.finish()
        except BaseException:
            self._file.discard()
            raise

    def _discard(self) -> None:
        self._drop_pending()
        self._file.discard()


class StreamingDIMSEProvider(PackingDIMSEProvider):
    """pynetdicom's DIMSE provider, also staging each C-STORE data set to disk as it arrives.

    The handler takes the stream of its request with :meth:`take_stream` (by Message ID) and finishes
    or discards it; streams left when the association ends are discarded by :meth:`close_streams`.
    """

    def adopt_store(self, store: InstanceStore) -> None:
        self._store = store
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-stream")
        self._streams: dict[int, InstanceStream] = {}
        #: the message being received, its Message ID and its stream (None: not streamed)
        self._current: tuple[DIMSEMessage, int, InstanceStream | None] | None = None
        #: the stream of the next C-STORE, its file created while the association waits for it
        self._spare: InstanceStream | None = None
        #: status of each request the handler answered itself (answer_now), by Message ID
        self._answered: dict[int, int] = {}
        self._closed = False

    def receive_primitive(self, primitive: Any) -> None:
        message = self.message
        if isinstance(message, C_STORE_RQ) and not self._closed:  # its command set is decoded
            stream = self._stream_of(message)
            if stream is not None:
                for _, data in primitive.presentation_data_value_list:
                    if data[0] & 1:  # a command fragment after the command set: let pynetdicom judge
                        self._give_up(message)
                        break
                    stream.feed(memoryview(data)[1:])
                    if data[0] & 2:  # the last fragment
                        stream.finish()
        super().receive_primitive(primitive)

    def send_msg(self, primitive: Any, context_id: int) -> None:
        if not isinstance(primitive, C_STORE) or primitive.MessageIDBeingRespondedTo is None:
            super().send_msg(primitive, context_id)
            return
        answered = self._answered.pop(primitive.MessageIDBeingRespondedTo, None)
        if answered is None:
            super().send_msg(primitive, context_id)
        elif answered != primitive.Status:  # the handler failed after its row was committed and answered
            returned = primitive.Status
            event(log, "listener.answer.differs", logging.ERROR, answered=f"0x{answered:04X}",
                  returned=f"0x{returned:04X}" if isinstance(returned, int) else str(returned),
                  hint="the instance is stored; see the error before")
        self._prepare_spare()  # while the sender reads its next instance

    def answer_now(self, request: Any, context_id: int, status: int) -> bool:
        """Send the response to a C-STORE request now, from its handler; whether it was sent.

        pynetdicom sends the handler's status once the handler has returned: the pool taking its
        connection back, the handler's log line, pynetdicom's own checks. That sent it 0.15 ms after
        the commit in an in-process trace, a wait the sender has on every instance. A response sent
        here is not sent again when pynetdicom hands the same one over (:meth:`send_msg`). False where
        it must go through pynetdicom (someone listens to sent messages, a tiny peer PDU, the DUL
        cannot send it from this thread): the handler's return value is then sent as usual.
        """
        if self._closed or self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            return False
        try:
            fragment = self._packed_response(request.AffectedSOPClassUID, request.MessageID, status,
                                             request.AffectedSOPInstanceUID)
            if fragment is None or not self._send_now(context_id, fragment):
                return False
        except Exception as exc:  # not sent: pynetdicom sends the handler's return value instead
            event(log, "listener.answer.not_sent", logging.WARNING, error=type(exc).__name__)
            return False
        self._answered[int(request.MessageID)] = status
        return True

    def take_stream(self, message_id: int) -> InstanceStream | None:
        """The stream of a received C-STORE request, now the caller's; None if it was not streamed."""
        return self._streams.pop(message_id, None)

    def close_streams(self) -> None:
        """Discard what no handler took (an aborted association); stop the I/O thread when it is done."""
        self._closed = True
        while self._streams:
            _, stream = self._streams.popitem()
            stream.discard()
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.discard()
        self._io.shutdown(wait=False)

    def _stream_of(self, message: DIMSEMessage) -> InstanceStream | None:
        if self._current is not None and self._current[0] is message:
            return self._current[2]
        stream, message_id = None, -1
        try:
            if message.data_set.tell() == 0:  # type: ignore[union-attr]  # none of it came with the command
                command = message.command_set
                syntax = self.assoc._accepted_cx[cast(int, message.context_id)].transfer_syntax[0]
                prefix = file_meta_bytes(command.AffectedSOPClassUID, command.AffectedSOPInstanceUID, syntax)
                message_id = int(command.MessageID)
                stream, self._spare = self._spare or InstanceStream(self._store, self._io), None
                stream.begin(prefix)
                previous = self._streams.pop(message_id, None)
                if previous is not None:  # the ID reused while its data set was never handled
                    previous.discard()
                self._streams[message_id] = stream
                if self._closed:  # closed meanwhile, by another thread
                    self.close_streams()
        except Exception as exc:  # a message pynetdicom will refuse or answer itself: not streamed
            event(log, "listener.stream.skipped", logging.DEBUG, error=type(exc).__name__)
            stream = None
        self._current = (message, message_id, stream)
        return stream

    def _prepare_spare(self) -> None:
        """Have the next C-STORE's file created while the sender reads its next instance.

        Made when the data set's first fragment arrived, the file held that data set's first write back
        for as long as the create took: 0.35-1.4 ms on the development VM's ext4 before the storage root
        was marked (:func:`listener.storage.mark_top_of_hierarchy`), 12 us after, and still tenths of a
        millisecond where the allocator must pass over recently deleted inodes or on another file
        system. Made right after the fsync instead, the rename that follows started 0.35 ms late in a
        trace; here it overlaps the sender reading its next instance.
        """
        if self._spare is None:
            self._spare = InstanceStream(self._store, self._io)
            if self._closed:  # closed meanwhile, by another thread
                self.close_streams()

    def _give_up(self, message: DIMSEMessage) -> None:
        if self._current is not None:
            stream = self._streams.pop(self._current[1], None)
            if stream is not None:
                stream.discard()
        self._current = (message, -1, None)
