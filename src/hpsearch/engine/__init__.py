"""The training engine: a :class:`~hpsearch.engine.spec.TrialSpec` trained on a device.

``spec`` (what one trial trains, plain dataclasses), ``data`` (ImageFolder photos, decoded once,
held on the device), ``model`` (the CNN family), ``train`` (``fit``), ``runtime`` (process-wide
CPU settings) and ``latency`` (inference time per image). No Optuna, SQLAlchemy or FastAPI here:
the engine can be run and tested without a study.
"""
