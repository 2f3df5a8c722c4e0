"""Errors the user can fix. The CLI prints them as one line and exits non-zero; real bugs keep their traceback."""


class UserError(Exception):
    """Bad input (config, path, name): shown as one line naming the problem."""
