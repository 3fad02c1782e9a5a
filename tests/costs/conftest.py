"""Fixtures of the cost tests: an embedded server of ``tests.models:DagNet``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lightning_split.serve.embedded import EmbeddedServer
from lightning_split.serve.host import ModelHost
from tests.models import DagNet


@pytest.fixture(scope="module")
def embedded() -> Iterator[EmbeddedServer]:
    host = ModelHost(lambda init: DagNet(**dict(init)), "tests.models:DagNet")
    with EmbeddedServer(host) as server:
        yield server
