"""Operations on a running system, not pipeline stages: the drift check and reproducing a registered version.

No stage imports these; their commands are `mlops drift` and `mlops reproduce` (cli/).
"""
