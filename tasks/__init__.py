"""Stage logic of the pipeline, by role.

    tasks/<stage>/   one package per dvc.yaml stage (ingest, prepare, validate, train, evaluate, compress,
                     package, promote): its pure core, its `run(params, layout)` shell, and `python -m
                     tasks.<stage>` (what dvc.yaml calls)
    tasks/common/    what every stage shares: config, errors, layout, atomic writes, data, tracking, registry
    tasks/nn/        the PyTorch code several stages share
    tasks/shipped/   the code that also ships inside the Bento

A stage knows nothing of Prefect (flows/), of the commands a person types (cli/) or of the jobs that are not
stages (jobs/: scoring, sweeps, drift, reproduce).
"""
