"""The one exception type that reaches the user as a single line instead of a traceback."""


class UserError(Exception):
    """Bad input or an impossible option: the CLI prints ``aiokd: error: <message>`` and exits 2.

    The message names the file and line, or the option, that is wrong.
    """
