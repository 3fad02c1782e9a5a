"""One client of a federation test: trains DagNet on its shard of digits; saves its final state dict.

python -m tests.fedclient URL MODE CLIENT CLIENTS ROUND_STEPS STEPS OUT [GROUP [scheduler]]

Client ``i`` builds its DagNet from seed ``100 + i`` (so the federation's overwriting of the
others by client 0's weights is visible) and trains on rows ``[i * STEPS * 32, (i + 1) * STEPS * 32)``
of digits, in order, 32 a batch, cut after the first layer (``stem``). With ``scheduler``,
DagNet steps a StepLR every optimizer step (``DagNet(scheduler=True)``).
"""

from __future__ import annotations

import logging
import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

BATCH = 32
KEY = "the clients' shared secret, never the server's"


def shard(client: int, steps: int) -> TensorDataset:
    """Client ``client``'s rows of digits: ``steps`` batches of ``BATCH``."""
    from tests.models import digits

    images, labels = digits().tensors
    rows = slice(client * steps * BATCH, (client + 1) * steps * BATCH)
    return TensorDataset(images[rows], labels[rows])


def initial_model(client: int, **model_kwargs):
    from tests.models import DagNet

    torch.manual_seed(100 + client)
    return DagNet(**model_kwargs)


def main(argv: list[str]) -> None:
    from lightning_split import Federation, SplitStrategy
    from tests.helpers import trainer

    url, mode, client, clients, round_steps, steps, out = argv[:7]
    group = argv[7] if len(argv) > 7 else "digits"
    client, clients, round_steps, steps = int(client), int(clients), int(round_steps), int(steps)
    logging.basicConfig(level=logging.INFO, format=f"client {client}: %(message)s")
    torch.set_num_threads(1)
    model = initial_model(client, scheduler=len(argv) > 8 and argv[8] == "scheduler")
    federation = Federation(
        group=group, clients=clients, client=client, mode=mode, round_steps=round_steps, key=KEY, timeout=600
    )
    data = DataLoader(shard(client, steps), batch_size=BATCH, shuffle=False)
    trainer(SplitStrategy(server=url, cut="stem", federation=federation), max_steps=steps).fit(model, data)
    torch.save(model.state_dict(), out)


if __name__ == "__main__":
    main(sys.argv[1:])
