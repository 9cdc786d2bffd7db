"""Errors every layer raises: a leaf module, so that nothing imports a layer above it for them."""


class FederationError(RuntimeError):
    """The federation cannot go on: sites never connected, or every site failed a round."""
