"""clipcap.train: ``clipcap train`` (needs the ``[train]`` extra).

``options`` (the training options, torch-free), ``data`` (batches), ``env`` (device, precision,
torchrun), ``state`` (checkpoints and resume) and ``loop`` (the training loop).
"""
