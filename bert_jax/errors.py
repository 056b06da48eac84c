"""Errors a user can act on: the CLIs print their message in one line and exit with status 2."""


class UserError(ValueError):
    """Bad input, bad config or a missing file; the message names the thing and what to do."""


SAVE_FAILED_STATUS = 75  # EX_TEMPFAIL: the storage failed; the same command resumes the run


class SaveFailed(RuntimeError):
    """A checkpoint could not be saved, after retries; the message names the step, the object and
    the newest intact checkpoint. The CLIs print it in one line and exit SAVE_FAILED_STATUS."""
