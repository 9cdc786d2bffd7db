"""Write one CSV of SEA rows into a site's data folder, for trying a deployment by hand.

Rows are ``x0, x1, x2 ~ U[0, 10]`` and ``y = 1 if x0 + x1 > theta else 0`` (the schema of
``conf/scenario/deployed.yaml``); ``--flip`` inverts the labels (concept drift). The file is
written beside the target and renamed into place, as a site's own pipeline should.

Usage
-----
    python scripts/sea_site_file.py sites/site-0/day1.csv --rows 150 --seed 0
    python scripts/sea_site_file.py sites/site-0/day3.csv --rows 150 --seed 7 --flip
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="the CSV to write (its folder is created)")
    parser.add_argument("--rows", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--theta", type=float, default=8.0)
    parser.add_argument("--flip", action="store_true", help="invert the labels (drift)")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    x = rng.uniform(0, 10, (args.rows, 3))
    y = (x[:, 0] + x[:, 1] > args.theta).astype(int)
    frame = pd.DataFrame(
        {"x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2], "y": 1 - y if args.flip else y}
    )
    args.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.path.with_name(f".{args.path.name}.tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, args.path)
    print(f"{args.path}: {args.rows} rows" + (" (labels flipped)" if args.flip else ""))


if __name__ == "__main__":
    main()
