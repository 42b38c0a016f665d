"""How `heimdall-training train` ends: the contract between the job and the runner that starts it.

The CLI returns these; the service's child-process runner reads them. Both import this module,
so neither imports the other.
"""

EXIT_OK = 0  # done: the result line on stdout is the job's outcome
EXIT_FAILED = 1  # the job failed; the error names the stage and whether a retry can help
EXIT_USAGE = 2  # bad flags or settings: retrying the same command cannot help
EXIT_INTERRUPTED = 3  # SIGTERM: a checkpoint was saved and the job can resume from it
