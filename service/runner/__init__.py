"""Running training children (async side): the worker that claims jobs, the child process and
its warm spare, and what a job's child is told to do."""
