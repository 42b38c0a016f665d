"""`heimdall-training`, the command line: the entry point of both processes. Each command imports
its side (service/ or training/) only when it runs, so `--help` and `serve` never load torch."""
