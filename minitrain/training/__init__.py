"""Training mechanics under the scripts: processes, data parallelism, optimizer, precision,
the training state, the run folder, evaluation, metrics, logging.
"""
