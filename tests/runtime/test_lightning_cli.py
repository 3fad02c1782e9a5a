"""Lightning-native details: LightningCLI's strategy short forms, the plan in ``hparams.yaml``.

The CLI runs as a user runs it, in a fresh interpreter whose script never imports
lightning_split: ``strategy="split"`` has to be known to Lightning through the installed
start-up file (``lightning_split.pth``), not through an import of the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.loggers import CSVLogger

from lightning_split import SplitStrategy
from tests.helpers import ROOT, trainer
from tests.models import DagNet, loader

SCRIPT = """
import lightning as L
from lightning.pytorch.cli import LightningCLI
from tests.models import DagNet, loader

class Digits(L.LightningDataModule):
    def train_dataloader(self):
        return loader(64)

cli = LightningCLI(DagNet, Digits, save_config_callback=None, run=False)
cli.trainer.fit(cli.model, cli.datamodule)
print("strategy:", type(cli.trainer.strategy).__module__, type(cli.trainer.strategy).__name__)
"""


@pytest.mark.parametrize(
    "flags",
    [
        ["--trainer.strategy=split"],
        ["--trainer.strategy=lightning_split.SplitStrategy"],
        ["--trainer.strategy.class_path=lightning_split.SplitStrategy", "--trainer.strategy.init_args.cut=b"],
    ],
    ids=["name", "class_path_string", "class_path_and_init_args"],
)
def test_lightning_cli_takes_the_strategy_by_name_and_by_class_path(flags, tmp_path: Path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(script), "--trainer.max_steps=2", "--trainer.accelerator=cpu"]
    command += ["--trainer.logger=false", "--trainer.enable_progress_bar=false", *flags]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "strategy: lightning_split.runtime.strategy SplitStrategy" in result.stdout


def test_the_start_up_file_can_be_turned_off(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LIGHTNING_SPLIT_NO_STARTUP": "1"}
    code = "import sys, lightning.pytorch; print('lightning_split' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr[-2000:]


def test_the_plan_is_written_to_hparams_yaml(tmp_path: Path):
    logger = CSVLogger(tmp_path)
    trainer(SplitStrategy(cut="b"), max_steps=2, logger=logger).fit(DagNet(), loader(64))
    hparams = yaml.safe_load(Path(logger.log_dir, "hparams.yaml").read_text())
    assert hparams["split/cut"] == "add,b" and hparams["split/source"] == "cut=b"
    assert hparams["split/cut_bytes"] > 0 and hparams["lr"] == 0.05  # the module's own hparams stay
