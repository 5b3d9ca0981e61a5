"""The training engine: a :class:`~hpsearch.engine.spec.TrialSpec` trained on a device.

``spec`` (what one trial trains, plain dataclasses), ``images`` (the ImageFolder listing and
decoding one photo, no torch), ``data`` (the photos decoded once, held on the device), ``model``
(the CNN family), ``train`` (``fit``), ``runtime`` (process-wide CPU settings), ``latency``
(inference time per image) and ``prepare`` (``hpsearch data prepare``). No Optuna, SQLAlchemy or
FastAPI here: the engine can be run and tested without a study.
"""
