"""A pynetdicom storage SCP that stores nothing: the transport's own ceiling, for the ingest benchmark.

``python -m ops.bench.null_scp PORT`` answers every C-STORE with Success after pynetdicom has received
the whole data set, and does nothing else. The listener cannot be faster than this.
"""

from __future__ import annotations

import sys

from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts


def main(port: int) -> None:
    ae = AE(ae_title="NULLSCP")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.maximum_pdu_size = 1_048_576
    ae.start_server(("127.0.0.1", port), block=True,
                    evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])


if __name__ == "__main__":
    main(int(sys.argv[1]))
