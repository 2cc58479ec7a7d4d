"""The one exception type for problems a user can fix: the CLI prints its message on one line."""


class TaggerError(Exception):
    """Bad input or a bad request, explained for people: name the file or value and what to do."""
