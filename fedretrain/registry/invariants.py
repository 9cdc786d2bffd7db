"""The registry's invariants, checked over its rows: a pure function, testable on its own."""

from __future__ import annotations

from collections.abc import Callable

from fedretrain.registry.errors import ModelFileError
from fedretrain.registry.records import ModelVersion, Status, alias_cluster


def find_problems(
    versions: list[ModelVersion],
    aliases: dict[str, int],
    verify: Callable[[ModelVersion], object],
) -> list[str]:
    """Every broken invariant, in words; empty when the registry is consistent.

    A ``cluster-N`` alias (``adaptation=clustered``) names a version trained for cluster N
    that was not withdrawn (rejected or rolled back). ``verify`` raises
    :class:`ModelFileError` for a version whose model file is missing or does not match its
    sha256.
    """
    problems: list[str] = []
    numbers = [v.version for v in versions]
    if numbers != list(range(1, len(numbers) + 1)):
        problems.append(f"version numbers are not contiguous from 1: {numbers}")
    by_number = {v.version: v for v in versions}
    champions = [v.version for v in versions if v.status is Status.champion]
    if versions and len(champions) != 1:
        named = ", ".join(f"v{n}" for n in champions) or "none"
        problems.append(f"expected exactly one champion, found {len(champions)} ({named})")
    if versions and "champion" not in aliases:
        problems.append("the champion alias is not set")
    for name, number in aliases.items():
        target = by_number.get(number)
        cluster = alias_cluster(name)
        if target is None:
            problems.append(f"alias {name} points to v{number}, which does not exist")
        elif cluster is not None:
            if target.cluster != cluster:
                problems.append(
                    f"alias {name} points to v{number}, which was trained for "
                    f"{'no cluster' if target.cluster is None else f'cluster {target.cluster}'}"
                )
            if target.status in (Status.rejected, Status.rolled_back):
                problems.append(
                    f"alias {name} points to v{number}, whose status is {target.status.value}"
                )
        elif target.status.value != name:  # the alias names match the statuses they require
            problems.append(
                f"alias {name} points to v{number}, whose status is {target.status.value}"
            )
    for v in versions:
        if v.parent is not None and v.parent not in by_number:
            problems.append(f"v{v.version}'s parent v{v.parent} does not exist")
        try:
            verify(v)
        except ModelFileError as err:
            problems.append(str(err))
    return problems
