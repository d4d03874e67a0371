"""`python -m models`: the offline command line (see models.cli)."""

import sys

from models.cli import main

sys.exit(main())
