"""Running DVC from Python: what the Prefect tasks and flows (``tasks/``, ``flows/``) and the demo share.

- :mod:`~cvpipe.pipeline.commands`: DVC's argv, the tools' environment, line streaming, process-tree kill.
- :mod:`~cvpipe.pipeline.graph`: DVC's stage graph from ``dvc.yaml``, targets, topological order.
- :mod:`~cvpipe.pipeline.repro`: one stage through DVC (``dvc status --json``, ``dvc repro --single-item``).
- :mod:`~cvpipe.pipeline.lock`: one flow run per project (run lock; refusal while ``dvc repro`` runs).
- :mod:`~cvpipe.pipeline.params`: a run's params file merged into ``params.yaml``.
- :mod:`~cvpipe.pipeline.summary`: what a run reports (outcomes, metrics, the data's lineage).
- :mod:`~cvpipe.pipeline.workspace`: scratch git + DVC workspaces (the demo, end-to-end tests).
"""
