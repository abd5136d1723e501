"""The one exception type lmlab raises for bad input: its message is meant for a person."""


class LmlabError(Exception):
    """Bad config, missing file or malformed data; the message names the key, file:line or value."""
