"""From a registered model to trades: signals on the newest bar, a paper broker with a ledger, parity with the
backtest, and forward monitoring.

- ``signals``: a model acting as it does in forward trading (:class:`~trading.signals.ForwardPolicy`), the
  observation of any bar and account through TradingEnv (:class:`~trading.signals.ForwardEnv`), why a model
  decided (Q-values or action probabilities), and ``evaluate_bot.py --signal``.
- ``ledger``: the paper-trading database (SQLAlchemy Core: SQLite by default, any SQLAlchemy URL).
- ``paper``: the paper broker (fills with :mod:`rl_env.broker`, the env's own rules), shadow accounts, and the
  parity check against :func:`evaluation.backtest.run_backtest`.
- ``forward``: the forward (paper) results of an account against what its validation period made plausible, and
  the promotion rule applied to a shadow challenger's forward returns (:func:`~trading.forward.judge_shadow`).
- ``brokers``: the broker interface (submit, cancel, positions, account), the local paper broker (the default)
  and an Alpaca paper-account adapter on alpaca-py.
"""
