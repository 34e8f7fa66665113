"""Prefect tasks: thin wrappers that run cvpipe's DVC stages (see ``tasks.dvc_stages``)."""
