"""The single exception type raised for bad or missing dataset files."""


class DatasetError(ValueError):
    """A dataset cannot be used as given; the message names the file, line or key at fault."""
