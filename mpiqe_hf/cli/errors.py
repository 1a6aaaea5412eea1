"""The one exception `mpiqe-score` turns into a one-line message and exit status 2."""


class UsageError(Exception):
    """Bad arguments, a missing device, an existing output, a model or dataset that cannot be used."""
