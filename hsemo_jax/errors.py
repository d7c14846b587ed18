"""Exceptions (and the warning) for bad input. The CLI prints these without a traceback."""


class InputError(ValueError):
    """Bad user input: names the file (and line/frame/key) and what was expected."""


class CheckpointError(InputError):
    """A checkpoint that cannot be read or does not match the architecture."""


class UnsafePickleError(CheckpointError):
    """A pickle that refers to a global outside the allow-list; nothing from it was executed."""


class InputWarning(UserWarning):
    """Input that is used, but not all of it or not verified (e.g. zip members that were skipped);
    the CLI prints it as one line."""
