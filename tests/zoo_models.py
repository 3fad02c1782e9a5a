"""Models nobody here wrote, wrapped as LightningModules, for the model zoo test.

Tiny configurations of Hugging Face GPT-2 and BERT, a timm ViT and CNN, and Lightning's demo
Transformer, built from configs (no downloads). Each module saves its hyperparameters so
that ``lightning-split serve --model tests.zoo_models:Class`` can build the same model, and
remembers the type of every output its ``forward`` returned, so a test can check that the
split returns what the unsplit module returns.
"""

from __future__ import annotations

import os

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # configs only: nothing is ever downloaded


class ZooModule(L.LightningModule):
    """Shared training setup: SGD with momentum, the output type of each forward kept."""

    def __init__(self) -> None:
        super().__init__()
        self.output_types: list[type] = []

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)

    def _seen(self, output):
        self.output_types.append(type(output))
        return output


class Gpt2Zoo(ZooModule):
    """``GPT2LMHeadModel``; the loss is the one the model returns (``out.loss``)."""

    def __init__(self, n_layer: int = 2, n_embd: int = 32, vocab_size: int = 100, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=2,
            vocab_size=vocab_size,
            n_positions=16,
            use_cache=False,
            tie_word_embeddings=False,  # a tied embedding and head would have to stay on one side
            bos_token_id=0,
            eos_token_id=0,
        )
        self.model = GPT2LMHeadModel(config)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None):
        return self.model(input_ids=input_ids, labels=labels)

    def training_step(self, batch, batch_idx):
        (ids,) = batch
        return self._seen(self(ids, labels=ids)).loss


class BertZoo(ZooModule):
    """``BertForSequenceClassification`` with labels; the loss is ``out.loss``."""

    def __init__(self, hidden_size: int = 32, num_layers: int = 2, vocab_size: int = 100, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=2,
            intermediate_size=2 * hidden_size,
            max_position_embeddings=16,
            num_labels=3,
        )
        self.model = BertForSequenceClassification(config)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None):
        return self.model(input_ids=input_ids, labels=labels)

    def training_step(self, batch, batch_idx):
        ids, labels = batch
        return self._seen(self(ids, labels=labels)).loss


class TimmZoo(ZooModule):
    """A timm model by name (``pretrained=False``) trained with cross-entropy on its logits."""

    def __init__(self, name: str = "efficientnet_b0", lr: float = 0.05, options: dict | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        import timm

        self.net = timm.create_model(name, pretrained=False, num_classes=10, **(options or {}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self._seen(self(x)), y)


VIT_OPTIONS = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}


class DemoTransformerZoo(ZooModule):
    """Lightning's demo ``Transformer`` (``lightning.pytorch.demos``), tiny, with the demo's loss."""

    def __init__(self, vocab_size: int = 100, ninp: int = 32, dropout: float = 0.1, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        from lightning.pytorch.demos import Transformer

        self.model = Transformer(vocab_size=vocab_size, ninp=ninp, nhead=2, nhid=ninp, nlayers=1, dropout=dropout)

    def forward(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.model(inputs, target)

    def training_step(self, batch, batch_idx):
        inputs, target = batch
        return F.nll_loss(self._seen(self(inputs, target)), target.view(-1))


def tokens(steps: int, batch_size: int = 4, length: int = 8, vocab_size: int = 100, labels: int = 0) -> DataLoader:
    """Random token ids (and next tokens, or class labels when ``labels`` is set), fixed by a seed."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (steps * batch_size, length + 1), generator=generator)
    if labels:
        data = TensorDataset(ids[:, :length], torch.randint(0, labels, (steps * batch_size,), generator=generator))
    else:
        data = TensorDataset(ids[:, :length], ids[:, 1:])
    return DataLoader(data, batch_size=batch_size)


def single_tokens(steps: int, batch_size: int = 4, length: int = 8, vocab_size: int = 100) -> DataLoader:
    """Random token ids alone (a causal language model's labels are its inputs)."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (steps * batch_size, length), generator=generator)
    return DataLoader(TensorDataset(ids), batch_size=batch_size)


def images(steps: int, batch_size: int = 8, size: int = 32) -> DataLoader:
    """Random images and labels of 10 classes, fixed by a seed."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(steps * batch_size, 3, size, size, generator=generator)
    y = torch.randint(0, 10, (steps * batch_size,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)
