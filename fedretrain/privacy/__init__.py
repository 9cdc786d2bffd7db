"""Differential privacy at sites: the only package that talks to Opacus, and the privacy ledger."""
