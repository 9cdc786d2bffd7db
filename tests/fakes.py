"""Test doubles shared across test folders (a plain module: see ``oracles.py`` for why)."""


class FakeGrid:
    """Only what a strategy's ``configure_*`` uses of Flower's Grid: the connected node ids."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)
