"""A pynetdicom storage SCP that stores nothing: the transport's own ceiling, for the ingest benchmark.

``python -m ops.bench.null_scp PORT [--stock]`` answers every C-STORE with Success after pynetdicom has
received the whole data set, and does nothing else. By default it accepts associations the way the
listener does (``listener.reactor``: woken by events, one-buffer reads); ``--stock`` uses pynetdicom's
own polling reactor, so the benchmark shows what the listener's transport gained. The listener cannot
be faster than this.

Both modes run with pynetdicom configured as in every node process (``ops.logs.configure``): its
"standard" event handlers unbound. Bound, they are listeners on the received and sent PDU events, so
the listener's transport decodes every PDU and encodes every response through pynetdicom's general
path as well as formatting dumps nobody reads. In ``triage bench ingest`` on the development VM the
listener's transport took 3.1 ms of CPU per CT slice with them bound and 1.2 ms without (222 and 429
instances/s): bound, its "ceiling" row was below the listener it bounds.
"""

from __future__ import annotations

import argparse
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts

from listener.reactor import EventDrivenRequestHandler
from ops.logs import configure


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.null_scp")
    parser.add_argument("port", type=int)
    parser.add_argument("--stock", action="store_true", help="pynetdicom's own polling reactor")
    args = parser.parse_args(argv)
    configure()
    ae = AE(ae_title="NULLSCP")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.maximum_pdu_size = 1_048_576
    options: dict[str, Any] = {} if args.stock else {"request_handler": EventDrivenRequestHandler}
    server = ae.make_server(("127.0.0.1", args.port), evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)],
                            **options)
    server.serve_forever()


if __name__ == "__main__":
    main()
