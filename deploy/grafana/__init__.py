"""The Grafana dashboard of the workers, generated from `deploy/grafana/dashboard.py`."""
