"""Connecting raises no DeprecationWarning under the websockets versions the project allows."""

from __future__ import annotations

import warnings

from lightning_split.serve.embedded import EmbeddedServer
from lightning_split.serve.host import ModelHost
from lightning_split.transport import messages
from lightning_split.transport.client import RemoteServer
from tests.models import DagNet


def test_connect_and_ping_without_deprecation_warnings():
    host = ModelHost(lambda init: DagNet(**dict(init)), "tests.models:DagNet")
    with EmbeddedServer(host) as server, warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        remote = RemoteServer(server.url)
        try:
            (reply,) = remote.call([messages.Ping(payload=None, reply_bytes=3)])
        finally:
            remote.close()
    assert reply.payload.numel() == 3
