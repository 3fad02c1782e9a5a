"""Session set-up: no state outside temporary directories, and real `serve` processes on 127.0.0.1.

Before anything is collected, ``LIGHTNING_SPLIT_CACHE`` (and matplotlib's config directory)
point into a fresh temporary directory of this run, removed at the end, so no verdict depends
on, and no test writes to, the user's ``~/.cache``. Child processes inherit the environment.
``serve`` processes and clients fork from one zygote (:mod:`tests.zygote`), which imports torch
and Lightning once for the run; it stops at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from tests import zygote
from tests.helpers import ServeProcess

ISOLATED = {"LIGHTNING_SPLIT_CACHE": "lightning-split-cache", "MPLCONFIGDIR": "matplotlib"}
_state: dict[str, object] = {}


def pytest_configure(config: pytest.Config) -> None:
    root = tempfile.mkdtemp(prefix="lightning-split-tests-")
    _state["root"], _state["saved"] = root, {name: os.environ.get(name) for name in ISOLATED}
    for name, folder in ISOLATED.items():
        os.environ[name] = os.path.join(root, folder)


def pytest_unconfigure(config: pytest.Config) -> None:
    zygote.close_shared()
    for name, value in _state.get("saved", {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if "root" in _state:
        shutil.rmtree(_state["root"], ignore_errors=True)


@pytest.fixture(scope="session")
def dagnet_server() -> Iterator[ServeProcess]:
    server = ServeProcess("--model", "tests.models:DagNet")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def persample_server() -> Iterator[ServeProcess]:
    server = ServeProcess("--model", "tests.models:PerSampleNet")
    yield server
    server.stop()
