"""Opening a study and everything it records.

``study`` (storage URLs, samplers, pruners, opening a study), ``resilience`` (riding out a
database restart), ``optuna_private`` (every use of Optuna's private parts), ``state`` (the
attribute names hpsearch records and the queries of a study's state), ``claims`` (the lock under
which workers and confirm claim work), ``budget`` (the shared trial budget), ``compat`` (whether
an existing study may be read or extended), ``existing`` (storages that must already exist),
``artifacts`` and ``checkpoint`` (the best trials' weights).
"""
