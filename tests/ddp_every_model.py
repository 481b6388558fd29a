"""Launched by ``tests/test_train.py`` under ``torchrun --nproc_per_node 2`` (gloo, CPU): every registered model
trains a few DDP steps on DATA; each run's ``metrics.json`` (OUT/MODEL/) records the ranks' weight spread.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_every_model.py DATA OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

from lsdata import models
from lsdata.defaults import TrainConfig
from lsdata.train import train

data, out = sys.argv[1], Path(sys.argv[2])
for name in models.names():
    # validated once, after the last step (no --eval-every)
    train(TrainConfig(model=name, data=data, out=str(out / name), device="cpu", threads=1, epochs=1, max_steps=3,
                      batch_size=4, max_eval_rows=16))
