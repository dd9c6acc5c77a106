"""Training: one job (train, validate, checkpoint, register), worker processes, hyperparameter search
(Optuna), continuous mode and the session record. ``train_bot.py`` is the command line over it."""
