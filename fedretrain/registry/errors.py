"""What can go wrong when opening a registry or reading a model back, in one family.

Each message names the file and what was expected, in one line, so that the CLI can print it
as it is.
"""

from __future__ import annotations


class RegistryError(Exception):
    """A registry that cannot be used as asked; the message says why and names the file."""


class NotARunFolderError(RegistryError):
    """The folder holds no registry (and none was to be created), or the file is not one."""


class SchemaVersionError(RegistryError):
    """The registry was written by a newer fedretrain than this one."""


class ModelFileError(RegistryError):
    """A version's model file is missing or does not match the sha256 recorded for it."""
