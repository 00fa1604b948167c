"""The jobs that are not dvc.yaml stages: they run on new inputs, on a running system, or around many stage runs.

    jobs/score/      batch scoring of new data with the champion's shipped model (`mlops score`)
    jobs/sweep/      hyperparameter and compression searches (`mlops sweep`); each trial runs the train and
                     compress stages' code
    jobs/engine.py   where scoring chunks and sweep trials run: in this process, or on a Dask cluster
    jobs/drift.py    served inputs against the training data (`mlops drift`)
    jobs/reproduce.py  rebuild a registered version from its commit, params and data (`mlops reproduce`)

They use tasks/ (the stages' code and what it shares); no stage imports them. Their flows are in flows/, their
commands in cli/.
"""
