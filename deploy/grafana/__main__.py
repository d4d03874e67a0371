"""`python -m deploy.grafana [--write | --check]`; see `deploy.grafana.dashboard`."""

import sys

from deploy.grafana.dashboard import main

sys.exit(main())
