"""Running trials.

``run`` (``hpsearch run`` and ``worker``: run, resume or join a search), ``workers`` (the loop
that claims and runs trials against an exact budget), ``launcher`` and ``gpu_plan`` (worker
processes and how many share a GPU), ``gpu_share`` (the workers on one GPU and its lock),
``objective`` (trial -> spec -> ``fit``, reports, pruning), ``progress`` (what the terminal
shows), ``stopping`` (Ctrl-C and SIGTERM), ``confirm`` with ``confirm_jobs`` and ``confirm_runs``
(retrain the best trials with new seeds) and ``train_one`` (``hpsearch train``: one
configuration).
"""
