"""Running DVC from Python: argv, environment, workspaces, stage graph."""
