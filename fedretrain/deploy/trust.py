"""What a deployed site agrees to build from a run's config.

The run's config travels from the server to every site, and a site instantiates some of its
``_target_`` strings: the data stream (``scenario.stream``) and the model factory
(``task.model``). A config from a server the site does not control could name any importable
callable there. A deployed site therefore builds only targets from the packages its operator
allows (``fedretrain agent --allow-targets``, default fedretrain's own), and refuses the
period otherwise, saying which target and how to allow it. Simulated sites run on the user's
own machine and are not restricted.

This guards the config, not the app: the ClientApp code itself comes with the run Flower
submits (see the deployment guide's security notes).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

DEFAULT_ALLOWED = ("fedretrain",)
SITE_BUILDS = ("scenario.stream", "task.model")  # the config nodes a deployed site builds


def parse_allowed(text: str | None) -> tuple[str, ...]:
    """Comma-separated package names; None or empty: fedretrain's own.

    >>> parse_allowed("fedretrain, mypkg.models.")
    ('fedretrain', 'mypkg.models')
    >>> parse_allowed(None)
    ('fedretrain',)
    """
    names = tuple(n.strip().rstrip(".") for n in (text or "").split(",") if n.strip(" ."))
    return names or DEFAULT_ALLOWED


def allowed(target: str, packages: Sequence[str]) -> bool:
    """Whether ``target`` lies in one of ``packages`` (a whole name: fedretrainx is not
    fedretrain).

    >>> allowed("fedretrain.models.MLP", ["fedretrain"]), allowed("fedretrainx.M", ["fedretrain"])
    (True, False)
    """
    return any(target == p or target.startswith(p + ".") for p in packages)


def refused_targets(nodes: dict[str, Any], packages: Sequence[str]) -> list[str]:
    """``where=target`` for every ``_target_`` under ``nodes`` outside ``packages``."""
    return [
        f"{where}={target}"
        for name, node in nodes.items()
        for where, target in _targets(node, name)
        if not allowed(target, packages)
    ]


def check_site_config(cfg: Any, packages: Sequence[str]) -> None:
    """Refuse (PermissionError) a run config whose site-built nodes name other packages."""
    nodes = {name: _node(cfg, name) for name in SITE_BUILDS}
    refused = refused_targets(nodes, packages)
    if refused:
        raise PermissionError(
            f"this site builds only targets from {', '.join(packages)}, and the run asks for "
            f"{', '.join(refused)}: if this site's operator trusts that code, start the agent "
            f"with --allow-targets {','.join([*packages, _package(refused[0])])}"
        )


def _node(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part, None) if not isinstance(node, dict) else node.get(part)
    return node


def _targets(node: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        if "_target_" in node:
            yield where, str(node["_target_"])
        for key, value in node.items():
            if key != "_target_":
                yield from _targets(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _targets(value, f"{where}[{i}]")


def _package(refused: str) -> str:
    """The top package of a refused ``where=target``: what --allow-targets would add."""
    return refused.split("=", 1)[1].split(".")[0]
