"""The two kinds of failure lowmed reports, and the exit codes they map to."""


class LowmedError(Exception):
    """Bad input: a path, option, file or field the user can fix. Exit code 2."""

    exit_code = 2


class RunFailed(Exception):
    """The input was fine but the run could not finish. Exit code 1."""

    exit_code = 1


class Interrupted(RunFailed):
    """Stopped by the user (Ctrl-C); the run can be resumed. Exit code 130, as for SIGINT."""

    exit_code = 130
