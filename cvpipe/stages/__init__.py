"""The DAG's stages: each reads its typed config and paths and returns a typed summary."""
