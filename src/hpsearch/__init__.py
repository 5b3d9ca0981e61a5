"""hpsearch: hyperparameter search for PyTorch CNNs on Optuna with SQL storage."""

from __future__ import annotations

__version__ = "0.1.0"
