"""Errors that reach the user as one line and a non-zero exit, never as a traceback."""


class UserError(Exception):
    """A mistake in input the user controls (config, flags, database path, server answers).

    The message names the problem and what to do about it; the CLI prints it and exits with
    `exit_code`.
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
