"""Every error raccnn raises on purpose, under one base.

A ``RaccnnError``'s message is one line for the user: what is wrong, where (file, line, config key,
option) and what to do. The command-line tools turn it into that line on stderr and its
``exit_code`` (``raccnn/cli.py``): 2 for input that cannot be used, 1 for a training that diverged.
"""


class RaccnnError(Exception):
    """The base of raccnn's errors; ``exit_code`` is what a command-line tool exits with."""

    exit_code = 2


class ConfigError(RaccnnError, ValueError):
    """A config file, an override or a resolved value is invalid."""


class DatasetError(RaccnnError, ValueError):
    """A dataset cannot be used as given; the message names the file, line or key at fault."""


class CheckpointError(RaccnnError, ValueError):
    """A checkpoint is missing, unreadable or does not fit the current config."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds objects beyond tensors and plain values (unpickling it could run code)."""


class PretrainedWeightsError(RaccnnError, FileNotFoundError):
    """Pretrained weights are missing, unreadable or do not fit the backbone."""


class DivergenceError(RaccnnError, RuntimeError):
    """The loss or a gradient is not finite; the message names the phase, epoch, step and terms."""

    exit_code = 1
