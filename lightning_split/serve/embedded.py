"""The server on a thread of this process, for ``SplitStrategy(server=None)`` and tests."""

from __future__ import annotations

import asyncio
import threading

from lightning_split.serve.app import ServerPolicy, SplitServer, bound_url
from lightning_split.serve.host import ModelHost


class EmbeddedServer:
    """A :class:`SplitServer` on a background thread of this process, on 127.0.0.1.

    The same server code as ``lightning-split serve``: a single machine needs no second
    command, and tests exercise the real transport.
    """

    def __init__(
        self, host: ModelHost, token: str | None = None, port: int = 0, policy: ServerPolicy | None = None
    ) -> None:
        self.server = SplitServer(host, token=token, policy=policy)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped: asyncio.Future[None] | None = None
        self.url = ""
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(port,), name="split-embedded-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise RuntimeError(f"embedded server failed to start: {self._error}") from self._error

    def _main(self, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve(port))
        except BaseException as exc:  # surfaced to the constructor
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self, port: int) -> None:
        started = await self.server.start("127.0.0.1", port)
        self.url = bound_url(started)
        self._stopped = asyncio.get_running_loop().create_future()
        self._ready.set()
        await self._stopped
        started.close()
        await started.wait_closed()
        await self.server.stop_reaper()

    def close(self) -> None:
        """Stop accepting, close connections, join the thread."""
        if self._stopped is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(lambda: self._stopped.done() or self._stopped.set_result(None))
        self._thread.join(timeout=10)
        self.server.close()

    def __enter__(self) -> EmbeddedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
