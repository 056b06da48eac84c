"""Errors a user can act on: the CLIs print their message in one line and exit with status 2."""


class UserError(ValueError):
    """Bad input, bad config or a missing file; the message names the thing and what to do."""
