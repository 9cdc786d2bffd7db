"""Independent oracles the tests check our maths against (a plain module, not a conftest: which
``conftest`` Python finds depends on the selection).

Importable as ``oracles`` from any test: pytest puts ``tests/`` on ``sys.path`` when it loads
``tests/conftest.py`` (rootdir-relative imports, no ``__init__.py``).
"""

from collections.abc import Iterable

import dp_accounting

from fedretrain.privacy.rdp import SampledGaussian


def dp_accounting_epsilon(composition: Iterable[SampledGaussian], delta: float) -> float:
    """ε at ``delta`` by Google's RDP accountant for ``composition`` run one after another.

    Each entry is ``steps`` self-composed applications of the Gaussian mechanism of noise
    multiplier σ on a Poisson sample of rate q (``PoissonSampledDpEvent``); ``sample_rate=1``
    is the plain Gaussian mechanism on every record (``GaussianDpEvent``). Only the three
    numbers are read from each entry: the accounting is dp-accounting's own.

    Opacus's known value for σ=1.5, q=0.04, 2,250 steps at δ=1e-5 is 7.32911; dp-accounting's
    grid of orders lands a little above it:

    >>> round(dp_accounting_epsilon([SampledGaussian(1.5, 0.04, 2250)], 1e-5), 4)
    7.3293
    """
    accountant = dp_accounting.rdp.RdpAccountant()
    for m in composition:
        event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(m.noise_multiplier)
        if m.sample_rate != 1:
            event = dp_accounting.PoissonSampledDpEvent(m.sample_rate, event)
        accountant.compose(dp_accounting.SelfComposedDpEvent(event, m.steps))
    return float(accountant.get_epsilon(delta))
