"""The error raised for a bad setting; CLIs print its one-line message and exit with code 2."""


class ConfigError(ValueError):
    """A config file, an override or a resolved value is invalid."""
