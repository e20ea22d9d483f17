"""The names that ``train.*`` settings choose from, kept below both the config (which validates
them) and the engine (which acts on them), so that the config imports nothing of the engine."""

OPTIMIZERS = ("sgd", "adam")  # train.*.optimizer (engine/phases.py, Phase.optimizer)
AMP_MODES = ("auto", "bf16", "fp16", "none")  # train.amp (engine/precision.py)
