"""The one base class of errors a user can fix (bad input, missing files, wrong shapes): the command line prints
their message, which names the file, key, line or tensor and what to do, and exits 1 without a traceback."""


class UserError(ValueError):
    pass
