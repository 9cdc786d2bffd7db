"""The adapter between fedretrain and Flower: the only library package that imports ``flwr``.

It converts our types to Flower records and back, builds the configured strategy, and starts
Flower's simulation engine. ``server/`` and ``clients/`` build on it.
"""
