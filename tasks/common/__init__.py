"""Code every stage shares: typed params (config), named errors, the project's paths (layout), atomic writes,
data splits and tables, MLflow tracking and the model registry, the typed files stages hand each other
(outputs), and the stage command line (stage_cli)."""
