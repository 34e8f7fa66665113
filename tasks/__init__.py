"""Prefect tasks: thin wrappers over :mod:`cvpipe.pipeline` that run cvpipe's DVC stages (``tasks.dvc_stages``)."""
