"""How a training child ends: the contract between the job and the runner that starts it.

The child (`python -m training`, `heimdall-training train`) returns these; the service's runner
reads them. Both import this module, so neither imports the other.
"""

import ctypes
import logging
import os
import signal
import sys

EXIT_OK = 0  # done: the job's Result was sent (or printed)
EXIT_FAILED = 1  # the job failed; the error names the stage and whether a retry can help
EXIT_USAGE = 2  # bad flags or settings: retrying the same command cannot help
EXIT_INTERRUPTED = 3  # SIGTERM: a checkpoint was saved and the job can resume from it


def exit_now(code: int):
    """End the process as soon as its output is out. The interpreter's own teardown of torch,
    Lightning and MLflow takes 2-3 s on this machine (in C: freeing modules and tensors), and the
    service publishes `model.registered` only when the child has exited. Nothing is lost: stdout,
    stderr and the logging handlers are flushed here; MLflow runs end and checkpoint uploads are
    joined before `main` returns; DataLoader workers are in the process group that the service
    kills, and they watch their parent."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux): a training child dies with the service,
    and a DDP rank that Lightning started dies with rank zero, so nothing races the job's next attempt."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
