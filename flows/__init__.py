"""Prefect flows and their entry points: ``python -m flows.pipeline`` (see ``flows.pipeline``)."""
