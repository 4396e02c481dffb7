"""Thin Dagster assets, one module per stage of the lineage graph (DESIGN.md section 3)."""
