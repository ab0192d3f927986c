"""syncd's benchmark: latency, backfill throughput, idle cost and transport comparison on
loopback (`python -m bench --help`; see bench/README.md)."""
