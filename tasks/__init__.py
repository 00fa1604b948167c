"""Stage logic of the pipeline: one module per stage, each a plain function over typed config and paths."""
