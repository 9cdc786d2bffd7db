"""Differential privacy at sites: the only package that talks to Opacus, and the privacy ledger.

Sample-level DP-SGD of a site's local training, accounted over the site's whole life:

- :mod:`~fedretrain.privacy.config`: :class:`PrivacyConfig`, the ``privacy`` config group.
- :mod:`~fedretrain.privacy.plan`: :func:`plan_training`, the σ, sample rate and steps of one
  call (σ calibrated to a per-cycle target ε when asked).
- :mod:`~fedretrain.privacy.ledger`: :class:`PrivacyLedger`, a site's composition history in
  a JSON file, its cumulative ε and budget :class:`Decision`.
- :mod:`~fedretrain.privacy.rdp`: the RDP maths (pure numpy/scipy).
- :mod:`~fedretrain.privacy.sampling`: Poisson batches.
- :mod:`~fedretrain.privacy.releases`: a site's last released update, re-sent when a resumed
  server asks for the same round again (no ε spent twice).
- :mod:`~fedretrain.privacy.dp_sgd`: ``dp_train``, DP-SGD of one local training (the fused
  engine in plain PyTorch, or Opacus's).
- :mod:`~fedretrain.privacy.opacus_adapter`: ``make_compatible`` and the Opacus engine, the one
  module that imports Opacus. Neither is imported here, so reading configs or ledgers never
  loads Opacus: ``from fedretrain.privacy.dp_sgd import dp_train``.
"""

from fedretrain.privacy.config import AccountantKind, ClippingMode, PrivacyConfig
from fedretrain.privacy.ledger import Decision, LedgerEntry, LedgerFormatError, PrivacyLedger
from fedretrain.privacy.plan import TrainingPlan, plan_training
from fedretrain.privacy.rdp import SampledGaussian

__all__ = [
    "AccountantKind",
    "ClippingMode",
    "Decision",
    "LedgerEntry",
    "LedgerFormatError",
    "PrivacyConfig",
    "PrivacyLedger",
    "SampledGaussian",
    "TrainingPlan",
    "plan_training",
]
