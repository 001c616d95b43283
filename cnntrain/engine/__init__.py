"""The engine: the only place that sees models and data together (training, evaluation,
ensembling, checkpoints, optimisers and schedules, logging)."""
