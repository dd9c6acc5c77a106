"""train_bot.py's helpers that do not fit one training job: hyperparameter search (``trainer.hpo``)."""
