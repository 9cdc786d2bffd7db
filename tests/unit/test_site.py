import numpy as np
import torch

from fedretrain.config import compose
from fedretrain.preflight import to_typed
from fedretrain.site import Site


def test_sites_split_the_pool_without_overlap_and_agree_on_the_initial_model() -> None:
    cfg = to_typed(compose(["runtime.num_clients=4", "data=dirichlet"]))
    sites = [Site.build(cfg, pid, 4) for pid in range(4)]
    # Digits images are distinct enough to identify samples by their pixels.
    seen = [s.x.reshape(len(s), -1) for site in sites for s in (site.train_data, site.holdout)]
    rows = np.concatenate(seen)
    assert len(rows) == 1797
    assert len({r.tobytes() for r in rows}) == len(np.unique(rows, axis=0))
    for site in sites:
        assert len(site.holdout) == round(0.2 * (len(site.train_data) + len(site.holdout)))
        for a, b in zip(site.model.parameters(), sites[0].model.parameters(), strict=True):
            torch.testing.assert_close(a, b)


def test_rebuilding_a_site_gives_the_same_data() -> None:
    cfg = to_typed(compose(["runtime.num_clients=3", "runtime.seed=9"]))
    a, b = Site.build(cfg, 1, 3), Site.build(cfg, 1, 3)
    np.testing.assert_array_equal(a.train_data.y, b.train_data.y)
    np.testing.assert_array_equal(a.holdout.x, b.holdout.x)
