"""What a run shows people: MLflow tracking (``run_tracker``), Ray metrics, figures, and the console's step lines."""
