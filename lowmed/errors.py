"""The two kinds of failure lowmed reports, and the exit codes they map to."""

import reprlib


class LowmedError(Exception):
    """Bad input: a path, option, file or field the user can fix. Exit code 2."""

    exit_code = 2


class RunFailed(Exception):
    """The input was fine but the run could not finish. Exit code 1."""

    exit_code = 1


class Interrupted(RunFailed):
    """Stopped by the user (Ctrl-C); the run can be resumed. Exit code 130, as for SIGINT."""

    exit_code = 130


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 6, 6, 80, 80


def quoted(value: object) -> str:
    """A value as an error message quotes it: its repr, shortened where it is long or deeply nested (a YAML alias
    can expand a few hundred bytes into megabytes), never computed whole."""
    return _SHORT.repr(value)
