"""The project's own exception: every failure a user can cause is one of these."""


class ChatGPTCliError(Exception):
    """A failure with a message fit to show the user on one line.

    ``exit_code`` is 1 for a runtime failure, 2 for a bad option value (usage).
    """

    exit_code = 1


class UsageError(ChatGPTCliError):
    exit_code = 2


class WeightsError(ChatGPTCliError):
    """A weights file or directory that is missing, malformed, or does not fit GPT-2."""


class OutputError(ChatGPTCliError):
    """Standard output cannot be written (a full disk, a closed descriptor): nothing more can be shown."""
