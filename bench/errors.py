"""Errors the user can fix. The CLI prints them as one line and exits non-zero; real bugs keep their traceback."""


class UserError(Exception):
    """Bad input (config, path, name): shown as one line naming the problem."""


class Unsupported(Exception):
    """A technique cannot run on this model or device, for the reason its library gives: the cell is stored
    ``skipped`` with that reason (a technique raises it from ``pipeline()``)."""
