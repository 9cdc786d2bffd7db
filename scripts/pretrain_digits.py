"""Pretrain the digits CNN centrally on digits 0 to 4 and save it, for fine-tuning federated.

The first half of the fine-tuning example (no download: scikit-learn bundles the digits). The
model has a 5-way head, so a federated run on digits 5 to 9 (``task=digits_5to9``, a 10-way
head) loads it with ``task.model.strict=false``: every array but the head's last layer.

Usage
-----
    python scripts/pretrain_digits.py pretrained/digits_0to4.safetensors
    fedretrain-simulate task=digits_5to9 task.model.pretrained=pretrained/digits_0to4.safetensors \\
        task.model.strict=false train.freeze=[features]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from fedretrain.model_io import save_state_dict
from fedretrain.models import DigitsCNN
from fedretrain.tasks.dataset import ArrayDataset
from fedretrain.tasks.digits import load_digits
from fedretrain.train_config import TrainConfig
from fedretrain.training import evaluate, train

CLASSES = (0, 1, 2, 3, 4)


def pretrain(out: Path, epochs: int = 20, seed: int = 0) -> float:
    """Train on 80% of digits 0 to 4, save to ``out``; the accuracy on the other 20%."""
    data = load_digits(classes=CLASSES)
    data = ArrayDataset(data.x, data.y, num_classes=len(CLASSES))
    train_data, holdout = data.split(0.2, np.random.default_rng(seed))
    torch.manual_seed(seed)
    model = DigitsCNN((1, 8, 8), len(CLASSES))
    cfg = TrainConfig(lr=0.05, momentum=0.9, local_epochs=epochs, batch_size=32)
    generator = torch.Generator().manual_seed(seed)
    train(model, train_data, cfg, cfg.lr, torch.device("cpu"), generator)
    result = evaluate(model, holdout, torch.device("cpu"))
    accuracy = float(np.trace(result.confusion) / result.num_examples)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_state_dict(
        model.state_dict(), out, {"task": "digits_cnn", "classes": ",".join(map(str, CLASSES))}
    )
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the .safetensors file to write")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    accuracy = pretrain(args.out, args.epochs, args.seed)
    print(f"pretrained on digits 0-4: holdout accuracy {accuracy:.3f}; wrote {args.out}")


if __name__ == "__main__":
    main()
