"""Prefect flows: thin shells over the DVC DAG and the stage functions in tasks/."""
