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


def user_message(e: Exception) -> str:
    """The one-line error for the user; a system error names its path(s) and the reason, not the errno."""
    if isinstance(e, OSError) and e.filename is not None:
        where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else f"{e.filename}"
        return f"{where}: {e.strerror or e}"
    return str(e) or type(e).__name__
