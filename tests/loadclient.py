"""One device of the load test: trains DagNet locally and split against URL; prints the largest difference.

python -m tests.loadclient ws://127.0.0.1:PORT SEED
"""

from __future__ import annotations

import copy
import json
import sys
import time

import torch


def main(url: str, seed: int) -> dict:
    from lightning_split import SplitStrategy
    from tests.helpers import trainer
    from tests.models import DagNet, loader

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    local = DagNet(optimizer="adam" if seed % 2 else "sgd", lr=0.01 + seed / 1000)
    split = copy.deepcopy(local)
    data = loader(320, batch_size=32)
    torch.manual_seed(seed + 1)
    trainer(max_steps=10).fit(local, data)
    started = time.perf_counter()
    torch.manual_seed(seed + 1)
    trainer(SplitStrategy(server=url, cut="b"), max_steps=10).fit(split, data)
    split_s = time.perf_counter() - started
    local_state, split_state = local.state_dict(), split.state_dict()
    diff = max((split_state[k] - v).abs().max().item() for k, v in local_state.items() if v.numel())
    return {"seed": seed, "max_abs_diff": diff, "split_s": split_s, "keys": len(local_state)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]))), flush=True)
