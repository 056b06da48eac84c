"""Errors a user can act on: the CLIs print their message in one line and exit with status 2."""


class UserError(ValueError):
    """Bad input, bad config or a missing file; the message names the thing and what to do.

    Raised by the library wherever the user can fix the cause; the command-line tools print its
    message in one line and exit with status 2 (never a traceback). A ValueError, so callers that
    already catch those keep working.

    Args:
        message: one line: the file, key or value at fault, and what to do about it.
    """


SAVE_FAILED_STATUS = 75  # EX_TEMPFAIL: the storage failed; the same command resumes the run


class SaveFailed(RuntimeError):
    """A checkpoint could not be saved, after retries; the message names the step, the object and
    the newest intact checkpoint. The CLIs print it in one line and exit SAVE_FAILED_STATUS."""
