"""Prefect flows and their deployment entry points (``flows.pipeline``); ``cvpipe flow run|serve`` runs them."""
