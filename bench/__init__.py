"""The CPU benchmarks and the GPU check: ``python -m bench.run_all`` (``make bench``); see docs/performance.md."""
