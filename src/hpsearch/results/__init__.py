"""Reading a study: ``read`` (open it, rank and pick trials, status, best, trials as CSV),
``report`` (plots and a summary), ``export`` (TorchScript, ONNX) and ``inference`` (predict and
evaluate with a checkpoint). Nothing here adds trials.
"""
