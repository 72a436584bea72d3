"""User-facing errors: the CLI prints their message on one line and exits 2."""


class UserError(Exception):
    """A problem with the user's input (flag, key, file, URI), not a bug in ganaug."""
