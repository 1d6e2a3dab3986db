"""The one exception type the CLIs print as a single line (exit code 2) instead of a traceback: bad input, or a
problem found before or during work that the user can fix (a missing file, a full disk, a corrupted input)."""


class HarnessError(Exception):
    """A user-facing failure; its message is one line that says what is wrong and, where it can, what to do."""


class ConfigError(HarnessError, ValueError):
    """Bad user input (a config value, a CLI override); the CLI prints it as one line and exits with code 2."""
