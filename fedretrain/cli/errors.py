"""The one error type of the ``fedretrain`` commands."""

from __future__ import annotations


class CliError(Exception):
    """A command that cannot run as asked; the message is printed as it is."""
