"""Named crash points for the crash tests (`tests/test_transfer_crash.py`).

With `EKD_FAILPOINT=<name>` in its environment a process kills itself with SIGKILL when it
reaches that point: no cleanup, no rollback handler, no flushed buffers, exactly like a power
cut or the OOM killer. Unset (always, in real use), `hit` is one dictionary lookup. The points
sit where a crash would hurt most: between an external effect and the commit recording it.
"""

from __future__ import annotations

import os
import signal

#: Where the transfer code calls `hit`, for the tests to enumerate.
POINTS = (
    "sender-after-queue",        # $transfer committed; nothing sent yet
    "sender-after-relay",        # the relay stored the package; `sent` not committed
    "receiver-before-stored",    # the package is being stored in the inbox; not committed
    "receiver-before-import",    # the import ran inside its transaction; not committed
    "receiver-after-import",     # imported and committed; the receipt not sent yet
)


def hit(name: str) -> None:
    if os.environ.get("EKD_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
