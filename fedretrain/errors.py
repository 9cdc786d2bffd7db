"""Errors every layer raises: a leaf module, so that nothing imports a layer above it for them."""


class FederationError(RuntimeError):
    """The federation cannot go on: sites never connected, or every site failed a round."""


class ConfigError(ValueError):
    """One or more configuration problems, each on its own line.

    >>> try:
    ...     raise_failed((1 > 0, "fine"), (0 > 1, "train.lr=0: must be positive"))
    ... except ConfigError as err:
    ...     print(err.problems)
    ['train.lr=0: must be positive']
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def raise_failed(*checks: tuple[bool, str]) -> None:
    """Raise one :class:`ConfigError` naming every check that failed; a schema's
    ``__post_init__`` lists its checks so that all of a group's problems are reported at once."""
    failed = [message for ok, message in checks if not ok]
    if failed:
        raise ConfigError(failed)
