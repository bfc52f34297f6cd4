"""Worker processes that end with the process that started them, even when it is SIGKILLed."""

from __future__ import annotations

import os
import select
import threading
import time
from pathlib import Path


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` is running; a zombie (killed, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (e.g. macOS): os.kill's answer stands
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def exit_with(pid: int, period_s: float = 1.0) -> None:
    """From a worker process: end it (``os._exit``) as soon as process ``pid`` exits.

    For pool workers whose parent is not ``pid`` (forkserver children) or that block on a
    queue whose other end a dead parent can no longer close (fork children inherit it).
    Linux waits on a pidfd, which a reused pid cannot fool; elsewhere ``pid`` is polled
    every ``period_s`` seconds.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(0)
    except (AttributeError, OSError):  # not Linux >= 5.3
        pidfd = None

    def watch() -> None:
        if pidfd is not None:
            select.select([pidfd], [], [])  # readable once the process has exited
        else:
            while process_alive(pid):
                time.sleep(period_s)
        os._exit(0)

    threading.Thread(target=watch, name=f"exit-with-{pid}", daemon=True).start()
