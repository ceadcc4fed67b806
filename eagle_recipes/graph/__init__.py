"""Compile a Recipe into a Plan (a DAG of stages), run it on Ray, submit it to a cluster."""
