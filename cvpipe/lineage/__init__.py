"""Lineage: a record per stage run, OpenLineage events, lineage queries."""
