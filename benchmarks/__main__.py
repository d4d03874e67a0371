"""`python -m benchmarks NAME [--size smoke|full] [--json OUT]`."""

import sys

from benchmarks.cli import main

sys.exit(main())
