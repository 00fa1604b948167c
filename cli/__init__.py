"""The commands a person types, as one program: `mlops <command>` (installed by `make install`), or `python -m cli`.

    mlops history | rollback        the champion's record in MLflow, and undoing a move   (cli/registry.py)
    mlops serve | rollout | status  the serving front: one port, Bentos replaced without downtime (cli/serving.py)
    mlops drift                     served inputs against the training data                (cli/drift.py)
    mlops reproduce MODEL REF       rebuild a registered version from its commit and data  (cli/reproduce.py)

Only argument parsing and printing live here; the work is done by tasks/, bento/front/ and flows/. No stage
imports this package, so editing a command's help text re-runs nothing (dvc.yaml, tests/unit/test_structure.py).
"""
