"""Runs things: the local stack, images, manifests, alerts, dashboards and JSON schemas."""
