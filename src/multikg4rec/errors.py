"""Errors a user can fix. The CLI prints them as one line (no traceback)."""


class UserError(Exception):
    """Bad input: a missing dataset, a malformed file, an unknown option.

    The message must say what is wrong and, where possible, where (file:line)
    and what to do about it.
    """


class Interrupted(UserError):
    """Ctrl-C / SIGTERM during a run: its state is saved and the same command resumes it.

    A sweep (``reproduce``, ``tune``) stops on it instead of moving on to its next run."""


class RunBusy(UserError):
    """The run directory is locked by another live process (a second sweep over the same run, say).

    A sweep defers such a run and waits for the other process to finish it (``run_dir``: the locked directory,
    which may be a prerequisite's, e.g. ConvNCF's BPR-MF initialisation)."""

    def __init__(self, message: str, run_dir=None):
        super().__init__(message)
        self.run_dir = run_dir
