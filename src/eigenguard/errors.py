"""The one exception type that means "the user gave us something we cannot use".

The CLI turns it into a one-line message on stderr and exit code 2; library callers can catch it.
"""


class EigenguardError(ValueError):
    """Bad input: the message names the bad value and what is allowed."""
