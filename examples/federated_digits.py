"""Many devices, one model: K clients on shards of digits train one model through one server.

    python examples/federated_digits.py                              # 3 clients, splitfed, 3 rounds
    python examples/federated_digits.py --mode sequential --clients 4 --rounds 2

It starts a `lightning-split serve` process and K client processes (each a Lightning fit
with ``SplitStrategy(federation=Federation(...))`` on its own shard of scikit-learn's digits,
cut after the first layer), then trains the same model centrally on all the shards for as
many steps, and prints the held-out accuracy after every round for both. Each client prints
its own accuracy when its round (splitfed) or turn (sequential) ends; the table shows the
client that holds the newest model (any client in splitfed, the last one in sequential).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parent.parent
BATCH, TEST_ROWS = 32, 297
KEY = "example passphrase shared by the clients, never by the server"


class DigitsNet(L.LightningModule):
    """A small CNN for 8x8 digits; ``conv`` is the first layer (the device's part)."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.head = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def data() -> tuple[TensorDataset, TensorDataset]:
    """Digits as (N, 1, 8, 8) floats: the training rows and the held-out test rows."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target)
    train = TensorDataset(images[:-TEST_ROWS], labels[:-TEST_ROWS])
    return train, TensorDataset(images[-TEST_ROWS:], labels[-TEST_ROWS:])


def shard(client: int, clients: int) -> TensorDataset:
    train, _ = data()
    return TensorDataset(*(tensor[client::clients] for tensor in train.tensors))


@torch.no_grad()
def accuracy(model: nn.Module) -> float:
    _, test = data()
    images, labels = test.tensors
    return float((model(images).argmax(1) == labels).float().mean())


class RoundAccuracy(L.Callback):
    """Every ``round_steps`` optimizer steps (after the round's model is in), the held-out accuracy.

    It is kept in :attr:`results` and, for a client, printed (the launcher reads it).
    """

    def __init__(self, round_steps: int, client: int | None = None) -> None:
        self.round_steps, self.client = round_steps, client
        self.results: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.round_steps == 0:
            self.results.append(accuracy(module))
            if self.client is not None:
                round_ = trainer.global_step // self.round_steps
                print(f"client {self.client} round {round_} accuracy {self.results[-1]:.4f}", flush=True)


def quiet_trainer(steps: int, callbacks=(), strategy="auto") -> L.Trainer:
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        strategy=strategy,
    )


def run_client(args: argparse.Namespace) -> None:
    from lightning_split import Federation, SplitStrategy

    torch.manual_seed(args.client)  # different initial weights: the federation starts from client 0's
    model = DigitsNet()
    federation = Federation(
        group="digits", clients=args.clients, client=args.client, mode=args.mode, round_steps=args.round_steps, key=KEY
    )
    loader = DataLoader(shard(args.client, args.clients), batch_size=BATCH, shuffle=True)
    # model= names the class as the server imports it (run as a script, it is __main__.DigitsNet here)
    strategy = SplitStrategy(
        server=args.server, cut="conv", federation=federation, model="examples.federated_digits:DigitsNet"
    )
    callbacks = [RoundAccuracy(args.round_steps, args.client)]
    quiet_trainer(args.rounds * args.round_steps, callbacks, strategy).fit(model, loader)


def centralised(args: argparse.Namespace) -> list[float]:
    """Local training on all the shards, as many samples a round as the federation's; accuracy per round."""
    torch.manual_seed(0)
    model = DigitsNet()
    train, _ = data()
    steps_per_round = args.round_steps * (args.clients if args.mode == "sequential" else 1)
    batch = BATCH * (1 if args.mode == "sequential" else args.clients)  # splitfed: a round step sees K batches
    callback = RoundAccuracy(steps_per_round)
    quiet_trainer(args.rounds * steps_per_round, [callback]).fit(model, DataLoader(train, batch, shuffle=True))
    return callback.results


def launch(args: argparse.Namespace, popen: Callable[..., Any] = subprocess.Popen) -> dict[str, list[float]]:
    """Start the server and the clients, wait for them, and compare with centralised training.

    ``popen`` starts each process (``subprocess.Popen``; the tests pass one that forks them
    from a process with torch already imported).
    """
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    serve = [sys.executable, "-m", "lightning_split.cli", "serve", "--model", "examples.federated_digits:DigitsNet"]
    server = popen([*serve, "--port", "0"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().split()[-1]
        common = ["--server", url, "--clients", str(args.clients), "--mode", args.mode]
        common += ["--rounds", str(args.rounds), "--round-steps", str(args.round_steps)]
        clients = [
            popen(
                [sys.executable, __file__, *common, "--client", str(i)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for i in range(args.clients)
        ]
        outputs = [client.communicate()[0] for client in clients]
        if any(client.returncode for client in clients):
            raise SystemExit(f"a client failed:\n{outputs}")
    finally:
        server.terminate()
        server.wait()
    holder = args.clients - 1 if args.mode == "sequential" else 0
    federated = [float(v) for v in re.findall(rf"client {holder} round \d+ accuracy ([0-9.]+)", outputs[holder])]
    central = centralised(args)
    print(f"{args.mode}, {args.clients} clients, {args.round_steps} steps a round")
    print("round  federated  centralised")
    for round_, (mine, theirs) in enumerate(zip(federated, central), start=1):
        print(f"{round_:5d}  {mine:9.3f}  {theirs:11.3f}")
    return {"federated": federated, "centralised": central}


def main(
    argv: Sequence[str] | None = None, popen: Callable[..., Any] = subprocess.Popen
) -> dict[str, list[float]] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--mode", choices=("splitfed", "sequential"), default="splitfed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-steps", type=int, default=10)
    parser.add_argument("--server", help=argparse.SUPPRESS)
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client is not None:
        run_client(args)
        return None
    return launch(args, popen)


if __name__ == "__main__":
    main()
