"""sbsync's benchmarks: ``python -m bench`` is the harness (see bench/run.py); the other modules
are focused benches kept by their owners (emulator, loop hop, lock renewal)."""
