"""`python -m benchmarks.decode_pool memory|throughput` (see the package docstring)."""

from benchmarks.decode_pool import main

raise SystemExit(main())
