"""The HTTP services hpsearch runs: ``app`` (``hpsearch serve``: one trial's model behind HTTP,
requests batched), ``upload`` (what ``POST /predict`` accepts), ``page`` (the page at ``/``) and
``dashboard`` (optuna-dashboard in this process, for ``hpsearch dashboard``). Both servers warn
alike when bound to all interfaces.
"""
