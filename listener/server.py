"""The DICOM SCP: Verification and Storage, each instance durable before it is acknowledged.

The C-STORE path (see DESIGN.md, listener/):

1. The received data set is taken as pynetdicom received it (the request's encoded bytes), never
   decoded and re-encoded: what is stored is byte for byte what was sent, behind the node's own file
   meta (``listener.filemeta``).
2. Those bytes reach a new file under ``<storage>/tmp`` while they arrive (made as the association's
   previous C-STORE was answered): each fragment is staged as its PDU is read, and written with what
   else is staged by the association's I/O thread (``listener.streaming``), and the file is fsynced
   as the last one comes in. A data set that was not streamed is written from memory by
   the handler. Meanwhile the handler parses the identifying attributes and checks every UID, then
   runs the row's statements (not yet committed; ``listener.records``, on the DB-API connection);
   only if the unique index refuses the row (a re-send) is the instance looked up. A refused instance
   gets its failure status and its temporary file is removed: it never reaches a final name.
3. Once the row's statements have run, two things happen at once: the I/O thread, right after its
   last write, fsyncs the temporary file, renames it to ``<storage>/<study>/<series>/<instance>.dcm``
   and fsyncs the folder, while the handler commits the row. Success is answered only once both are
   done, by the handler itself (``StreamingDIMSEProvider.answer_now``). A full disk (ENOSPC) or any
   other failure on either side answers 0xA700 (retry later) and takes the other side back: a failed
   commit removes the placed file, a file that could not be placed has its committed row removed
   (``RecordingTransaction.take_back``). A crash between the two can leave a row whose file never
   got its name: the next start removes such rows (``listener.recovery``), and a re-send of one
   older than ``PLACEMENT_WINDOW`` heals it. A re-send while such a row is younger (the same instance
   from two associations at once) is answered 0xA700: the other's file may still be on its way.
   The temporary file still gets its final name only once fsynced, so a final name never holds part
   of a file.
   Committing the row while the file is flushed, instead of after, saved 0.2-0.36 ms of the 3.2-3.4 ms
   per instance of one storescu on a 2-core Intel VM (three flushes, each waited for in turn before);
   overlapping the file's write and fsync with the transfer, the parse and the statements was measured
   the same way (``ops/bench/ingest.py``).

Associations are accepted through ``listener.reactor``: pynetdicom's own code, waiting on events
instead of polling every millisecond (twice the transport's throughput, measured there).

pynetdicom's own option to stream data sets to temporary files (``STORE_RECV_CHUNKED_DATASET``) is
deliberately not used: it writes the file in pynetdicom's DUL thread, so a write error there (ENOSPC)
aborts the association instead of answering 0xA700, and the file lands in the process-wide
``tempfile`` folder, not on the storage file system where it could be renamed.
"""

from __future__ import annotations

import errno
import functools
import io
import ipaddress
import logging
import os
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pydicom
from pydicom.filereader import read_dataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID, AllTransferSyntaxes, DeflatedExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import (
    AllStoragePresentationContexts,
    PresentationContext,
    build_context,
)
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db.models import utcnow
from listener import statuses
from listener.filemeta import file_meta_bytes
from listener.identity_scan import IDENTITY_KEYWORDS, scan_identity
from listener.reactor import EventDrivenRequestHandler
from listener.recent import Recent
from listener.records import InstanceMeta, InstanceRecorder, Recorded, RecordingTransaction
from listener.storage import InstanceStore
from listener.streaming import InstanceStream, StreamingDIMSEProvider
from listener.uids import InvalidUID, check_uid
from ops.logs import event

log = logging.getLogger("triage.listener")

_KNOWN_SERIES_MAX = 4096


class CorruptDataset(ValueError):
    """The received bytes are not a DICOM dataset the listener can read."""


def supported_transfer_syntaxes() -> list[str]:
    """Every transfer syntax whose pixel data an installed decoder handles (the worker's needs)."""
    syntaxes: list[str] = []
    for uid in AllTransferSyntaxes:
        try:
            available = get_decoder(uid).is_available
        except NotImplementedError:
            continue
        if available:
            syntaxes.append(str(uid))
    return syntaxes


def storage_contexts() -> list[PresentationContext]:
    """Verification plus every storage SOP class, each with every decodable transfer syntax."""
    syntaxes = supported_transfer_syntaxes()
    contexts = [build_context(Verification, syntaxes)]
    contexts += [build_context(cast(str, cx.abstract_syntax), syntaxes) for cx in AllStoragePresentationContexts]
    return contexts


def read_instance_meta(dataset: bytes | memoryview, transfer_syntax: str) -> InstanceMeta:
    """Parse a received data set (no file meta: the network carries none) far enough to know what it
    is and check its UIDs.

    The whole element structure is walked (large values are skipped), so a truncated or garbled data
    set is refused here instead of being acknowledged and failing later. A deflated data set is
    inflated first, so its element lengths are checked like any other. A plain data set is read by
    :func:`listener.identity_scan.scan_identity`; anything else by pydicom, which decides.
    """
    syntax = UID(transfer_syntax)
    try:
        if syntax == DeflatedExplicitVRLittleEndian:
            dataset = zlib.decompress(dataset, -zlib.MAX_WBITS)
        values = scan_identity(dataset, syntax.is_implicit_VR, syntax.is_little_endian)
        if values is None:
            values = pydicom_identity(dataset, syntax)
    except CorruptDataset:
        raise
    except Exception as exc:  # pydicom raises many types on hostile bytes (found by ops/bench/fuzz.py)
        raise CorruptDataset(f"{type(exc).__name__}: {exc}") from exc
    return instance_meta(values, transfer_syntax)


def pydicom_identity(dataset: bytes | memoryview, syntax: UID) -> dict[str, Any]:
    """The identifying values as pydicom reads them (raises on a data set it cannot read)."""
    ds = read_dataset(io.BytesIO(dataset), syntax.is_implicit_VR, syntax.is_little_endian, defer_size=4096)
    _check_value_lengths(ds, len(dataset))
    return {name: ds.get(name) for name in IDENTITY_KEYWORDS}


def instance_meta(values: dict[str, Any], transfer_syntax: str) -> InstanceMeta:
    """The row's identity from the values read, every UID checked (raises KeyError or InvalidUID)."""
    for name in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if values[name] in (None, ""):
            raise KeyError(name)
    return InstanceMeta(
        study_uid=check_uid(values["StudyInstanceUID"], "StudyInstanceUID"),
        series_uid=check_uid(values["SeriesInstanceUID"], "SeriesInstanceUID"),
        sop_instance_uid=check_uid(values["SOPInstanceUID"], "SOPInstanceUID"),
        sop_class_uid=check_uid(values["SOPClassUID"], "SOPClassUID"),
        transfer_syntax_uid=transfer_syntax,
        modality=_short_str(values["Modality"]),
        series_number=_int_or_none(values["SeriesNumber"]),
        instance_number=_int_or_none(values["InstanceNumber"]),
    )


def _check_value_lengths(ds: pydicom.Dataset, size: int) -> None:
    """Deferred (large) values are skipped by seeking, which never fails: check they fit the data set."""
    for raw in ds._dict.values():  # the raw elements as read: a public get_item per tag costs twice as much
        tell = getattr(raw, "value_tell", None)
        length = getattr(raw, "length", None)
        if tell is None or length is None or length == 0xFFFFFFFF:
            continue
        if tell + length > size:
            raise CorruptDataset(
                f"element {raw.tag} declares {length} bytes but the data set ends {size - tell} bytes after it starts"
            )


def _short_str(value: Any) -> str | None:
    text = str(value).strip() if value not in (None, "") else ""
    return text[:16] or None


def _int_or_none(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if -(2**31) <= number < 2**31 else None


class _AccessControlledServer(ThreadedAssociationServer):
    """Drops TCP connections from addresses outside the allow-list before any DICOM is spoken."""

    allowed_networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()
    reuse_port = False
    #: where the request handler streams received data sets (listener.reactor, listener.streaming)
    instance_store: InstanceStore | None = None

    def server_bind(self) -> None:
        if self.reuse_port:  # before bind: the kernel then spreads new connections over the processes
            cast(socket.socket, self.socket).setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if not self.allowed_networks:
            return True
        try:
            address = ipaddress.ip_address(client_address[0])
        except ValueError:
            return False
        allowed = any(address in network for network in self.allowed_networks)
        if not allowed:
            event(log, "listener.assoc.refused_address", logging.WARNING, peer=str(address))
        return allowed


class _SharedPortServer(_AccessControlledServer):
    """One of several listener processes bound to the same port (``TRIAGE_LISTENER_PROCESSES``)."""

    reuse_port = True


class Listener:
    """The node's storage SCP; ``start()`` serves in background threads, ``stop()`` drains them."""

    def __init__(
        self,
        *,
        store: InstanceStore,
        sessions: sessionmaker[Session],
        ae_title: str,
        host: str,
        port: int,
        allowed_aes: Sequence[str] = (),
        allowed_hosts: Sequence[str] = (),
        max_associations: int = 16,
        max_pdu: int = 1_048_576,
        acse_timeout: float = 30.0,
        dimse_timeout: float = 60.0,
        network_timeout: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
        share_port: bool = False,
    ) -> None:
        self.store = store
        with sessions() as session:
            self._recorder = InstanceRecorder(cast(Engine, session.get_bind()))
        self._host = host
        self._port = port
        self._allowed_networks = [ipaddress.ip_network(h, strict=False) for h in allowed_hosts]
        self._ssl_context = ssl_context
        self._server: _AccessControlledServer | None = None
        self._known_series: Recent[str, tuple[int, int]] = Recent(_KNOWN_SERIES_MAX)
        self._thread: threading.Thread | None = None
        self._max_associations = max_associations
        if share_port and not hasattr(socket, "SO_REUSEPORT"):
            raise OSError("several listener processes on one port need SO_REUSEPORT (Linux): "
                          "set TRIAGE_LISTENER_PROCESSES=1 on this system")
        self._server_class = _SharedPortServer if share_port else _AccessControlledServer
        self._io: ThreadPoolExecutor | None = None
        self._io_lock = threading.Lock()

        ae = AE(ae_title=ae_title)
        ae.supported_contexts = storage_contexts()
        ae.require_called_aet = True
        ae.require_calling_aet = list(allowed_aes)
        ae.maximum_associations = max_associations
        ae.maximum_pdu_size = max_pdu
        ae.acse_timeout = acse_timeout
        ae.dimse_timeout = dimse_timeout
        ae.network_timeout = network_timeout
        self.ae = ae

    def _placer(self) -> ThreadPoolExecutor:
        """The threads that place files while the handlers write rows (one per possible association)."""
        with self._io_lock:
            if self._io is None:
                self._io = ThreadPoolExecutor(max_workers=self._max_associations, thread_name_prefix="store-io")
            return self._io

    @property
    def port(self) -> int:
        """The bound port (useful when started with port 0)."""
        if self._server is None:
            return self._port
        return int(self._server.server_address[1])

    def start(self) -> None:
        handlers: list[evt.EventHandlerType] = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ABORTED, self._on_aborted),
        ]
        server = cast(_AccessControlledServer, self.ae.make_server(
            (self._host, self._port),
            ssl_context=self._ssl_context,
            evt_handlers=handlers,
            server_class=self._server_class,
            request_handler=EventDrivenRequestHandler,
        ))
        server.allowed_networks = self._allowed_networks
        server.instance_store = self.store  # data sets written as they arrive (listener.streaming)
        self.ae._servers.append(server)  # so that AE.shutdown() and server.shutdown() agree
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="dicom-acceptor", daemon=True)
        self._thread.start()
        event(log, "listener.started", ae_title=self.ae.ae_title, host=self._host, port=self.port,
              tls=self._ssl_context is not None, transfer_syntaxes=len(supported_transfer_syntaxes()))

    def stop(self, grace_seconds: float = 30.0) -> None:
        """Refuse new associations at once, let the running ones finish, abort what is left."""
        if self._server is None:
            return
        self._server.shutdown()  # closes the listening socket: new connections are refused
        deadline = time.monotonic() + grace_seconds
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self.ae.active_associations
        for assoc in left:
            assoc.abort()
        self._server = None
        with self._io_lock:
            if self._io is not None:
                self._io.shutdown(wait=True)
                self._io = None
        event(log, "listener.stopped", aborted_associations=len(left))

    # event handlers -------------------------------------------------------------------------
    def _on_echo(self, event_: evt.Event) -> int:
        return statuses.SUCCESS

    def _on_accepted(self, event_: evt.Event) -> None:
        event(log, "listener.assoc.accepted", calling_ae=event_.assoc.requestor.ae_title,
              peer=event_.assoc.requestor.address)

    def _on_rejected(self, event_: evt.Event) -> None:
        event(log, "listener.assoc.rejected", logging.WARNING, calling_ae=event_.assoc.requestor.ae_title,
              called_ae=event_.assoc.acceptor.ae_title, peer=event_.assoc.requestor.address)

    def _on_aborted(self, event_: evt.Event) -> None:
        event(log, "listener.assoc.aborted", logging.WARNING, calling_ae=event_.assoc.requestor.ae_title)

    def _on_store(self, event_: evt.Event) -> int:
        started = time.perf_counter()
        request = cast(C_STORE, event_.request)
        calling_ae = str(event_.assoc.requestor.ae_title).strip()
        transfer_syntax = str(event_.context.transfer_syntax)
        dimse = event_.assoc.dimse
        stream, answer = None, None
        if isinstance(dimse, StreamingDIMSEProvider):
            stream = dimse.take_stream(cast(int, request.MessageID))
            answer = functools.partial(dimse.answer_now, request, event_.context.context_id)
        # the received bytes themselves, not a copy (getvalue() would copy half a megabyte per CT slice)
        return self._store(cast(io.BytesIO, request.DataSet).getbuffer(), request, transfer_syntax, calling_ae,
                           started, stream, answer)

    def _store(self, dataset: memoryview, request: Any, transfer_syntax: str, calling_ae: str, started: float,
               stream: InstanceStream | None = None, answer: Callable[[int], bool] | None = None) -> int:
        # The bytes reach a temporary file (write, fsync) in an I/O thread while this thread checks
        # them and writes the row; the file is renamed into place only if they pass, while the row is
        # committed. Whatever happens, nothing is left under tmp/ once this returns.
        # Mostly written already while the data set arrived (``stream``, its file meta included);
        # written here from memory when it was not streamed.
        file_side: Callable[[Callable[[], None]], Future[None]]
        if stream is not None and stream.size == stream.prefix_size + len(dataset):
            size = stream.size
            writing = stream.finish()
            file_side = stream.after_writes
        else:
            if stream is not None:
                stream.discard()
            # what event_.encoded_dataset(include_meta=True) returns, without building a pydicom data set
            meta = file_meta_bytes(request.AffectedSOPClassUID, request.AffectedSOPInstanceUID, transfer_syntax)
            size = len(meta) + len(dataset)
            writing = self._placer().submit(self.store.write_temp, b"".join((meta, dataset)))
            file_side = self._placer().submit
        try:
            return self._check_and_record(dataset, size, writing, file_side, request, transfer_syntax, calling_ae,
                                          started, answer)
        finally:
            try:
                tmp = writing.result()
            except BaseException:
                pass  # write_temp removed its own file
            else:
                self.store.discard(tmp)  # a no-op once it was renamed into place

    def _check_and_record(self, dataset: memoryview, size: int, writing: Future[Path],
                          file_side: Callable[[Callable[[], None]], Future[None]], request: Any,
                          transfer_syntax: str, calling_ae: str, started: float,
                          answer: Callable[[int], bool] | None = None) -> int:
        try:
            sop_uid = check_uid(request.AffectedSOPInstanceUID, "AffectedSOPInstanceUID")
            meta = read_instance_meta(dataset, transfer_syntax)
        except InvalidUID as exc:
            return self._refuse(statuses.INVALID_UID, str(exc), calling_ae)
        except KeyError as exc:
            return self._refuse(statuses.MISSING_ATTRIBUTE, f"missing {exc.args[0]}", calling_ae)
        except CorruptDataset as exc:
            return self._refuse(statuses.CANNOT_UNDERSTAND, str(exc)[:200], calling_ae)
        if meta.sop_instance_uid != sop_uid or meta.sop_class_uid != str(request.AffectedSOPClassUID).strip():
            return self._refuse(statuses.DATASET_MISMATCH,
                                "SOP Class or Instance UID of the data set differ from the request", calling_ae)
        rel = self.store.relative_path(meta.study_uid, meta.series_uid, meta.sop_instance_uid)

        recorder = self._recorder
        try:
            with recorder.transaction() as transaction:
                try:
                    # The row is inserted first and the instance looked up only if its SOP Instance UID
                    # is taken: a re-send is rare, a look-up per instance is not free (ingest bench).
                    recorded = transaction.record(meta, path=rel.as_posix(), size_bytes=size, calling_ae=calling_ae,
                                                  now=utcnow(), ids=self._known_series.get(meta.series_uid))
                    # The file is made durable (its fsync, the rename, the folder's fsync: on the I/O
                    # thread, right after its last write) while the row is committed here; Success
                    # waits for both, and whichever fails takes the other back (module docstring).
                    placing = file_side(functools.partial(self._place, writing, rel))
                    try:
                        transaction.commit()
                    finally:
                        placed = placing.exception()  # waits for it
                    if placed is not None:
                        # The file first: only this association's rename can have put one there (no other
                        # heals a row this young), and once the row is gone another may store the instance.
                        try:
                            self.store.remove(rel)
                        finally:
                            self._take_back(transaction, recorded, sop_uid)
                        raise placed
                except recorder.driver_errors.IntegrityError:
                    # Already recorded: a re-send, or another association a moment ago. The unique index
                    # refused the row before this file was placed, so the first copy stays as it is. A row
                    # without its file is healed with this copy, unless it is young enough for its own
                    # file to be on its way still (then the sender is asked to retry).
                    transaction.rollback()
                    found = transaction.find_instance(meta.sop_instance_uid, utcnow())
                    if found is None:
                        raise
                    existing, recent = found
                    if not self.store.exists(existing):
                        if recent:  # another association's, its file maybe still on its way: not ours to heal
                            event(log, "listener.store.placing_elsewhere", logging.WARNING, sop_instance_uid=sop_uid,
                                  hint="the same instance is being stored by another association; the sender "
                                       "should retry")
                            return statuses.OUT_OF_RESOURCES
                        self.store.place(writing.result(), rel)  # a row left without its file: heal it
                        event(log, "listener.store.healed", logging.WARNING, sop_instance_uid=sop_uid)
                        return statuses.SUCCESS
                    event(log, "listener.store.duplicate", sop_instance_uid=sop_uid, calling_ae=calling_ae)
                    return statuses.SUCCESS
                except BaseException:
                    self.store.remove(rel)  # the row is rolled back as its connection goes back to the pool
                    raise
                if answer is not None:  # stored for good: the sender has its Success while this one tidies up
                    answer(statuses.SUCCESS)
            self._remember_series(meta.series_uid, (recorded.study_id, recorded.series_id))
        except (SQLAlchemyError, recorder.driver_errors.Error) as exc:
            event(log, "listener.store.db_error", logging.ERROR, sop_instance_uid=sop_uid,
                  error=type(exc).__name__, hint="check the database; the sender should retry")
            return statuses.OUT_OF_RESOURCES
        except OSError as exc:
            reason = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else os.strerror(exc.errno or 0)
            event(log, "listener.store.io_error", logging.ERROR, sop_instance_uid=sop_uid, reason=reason,
                  hint="free space or fix permissions under TRIAGE_DATA_DIR")
            return statuses.OUT_OF_RESOURCES
        if recorded.reopened:
            event(log, "listener.study.reopened", study_uid=meta.study_uid)
        event(log, "listener.store.ok", sop_instance_uid=sop_uid, study_uid=meta.study_uid,
              modality=meta.modality, transfer_syntax=transfer_syntax, bytes=size, calling_ae=calling_ae,
              ms=round((time.perf_counter() - started) * 1000, 2))
        return statuses.SUCCESS

    def _place(self, writing: Future[Path], rel: Path) -> None:
        self.store.place(writing.result(), rel)

    def _take_back(self, transaction: RecordingTransaction, recorded: Recorded, sop_uid: str) -> None:
        """Remove the committed row of an instance whose file could not be placed (the caller answers a
        failure). Should that fail too, the row stays without its file: the sender's re-send heals it,
        and the next start takes it back (``listener.recovery``)."""
        try:
            transaction.begin()
            transaction.take_back(recorded.instance_id, recorded.series_id, recorded.study_id)
            transaction.commit()
        except Exception as exc:
            event(log, "listener.store.take_back_failed", logging.ERROR, sop_instance_uid=sop_uid,
                  error=type(exc).__name__, hint="the row has no file until the sender re-sends it or the "
                                                "listener restarts")

    def _remember_series(self, series_uid: str, ids: tuple[int, int]) -> None:
        """Row ids of recently seen series, so the next instance skips the hierarchy look-ups."""
        self._known_series.put(series_uid, ids)

    def _refuse(self, status: int, reason: str, calling_ae: str) -> int:
        event(log, "listener.store.refused", logging.WARNING, status=f"0x{status:04X}",
              meaning=statuses.DESCRIPTIONS[status], reason=reason, calling_ae=calling_ae)
        return status


def make_ssl_context(cert: Path, key: Path, ca: Path | None, require_client_cert: bool) -> ssl.SSLContext:
    """TLS for DICOM (PS3.15 B.1): server certificate, optional client certificate verification."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=cert, keyfile=key)
    if ca is not None:
        context.load_verify_locations(cafile=ca)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else (
        ssl.CERT_OPTIONAL if ca is not None else ssl.CERT_NONE)
    return context
