"""Child processes that start in milliseconds: forked from one process that has imported torch and Lightning.

Importing torch, Lightning (and through it torchmetrics, torchvision, scipy.signal and
transformers) costs a new interpreter 10 to 15 s of CPU on this 2-core machine, and the suite
starts a hundred ``serve`` processes and clients. :class:`Zygote` pays that once: a helper
process (``python -m tests.zygote SOCKET``) imports everything, then forks one child per
request. The child is a real, separate process: its own pid, its own stdin/stdout/stderr
(the requester's pipe ends, passed over a Unix socket with ``SCM_RIGHTS``), its own working
directory and environment, and it runs ``python -m MODULE ARGS...`` or ``python SCRIPT
ARGS...`` exactly as the interpreter would (``runpy``), so ``serve`` and the clients run the
code users run. What differs from a fresh interpreter: the modules are already imported, and
``OMP_NUM_THREADS`` in the child's environment is applied with ``torch.set_num_threads``
(OpenMP read it when the zygote loaded torch). Tests of interpreter start-up itself (the
``.pth`` hook, import layering, hash-seeded fingerprints) keep plain ``subprocess``.

:class:`Child` is the requester's handle, a small ``subprocess.Popen`` look-alike (``pid``,
``stdout``, ``stderr``, ``poll``, ``wait``, ``communicate``, ``terminate``, ``kill``,
``returncode``: negative for a signal, as ``Popen``'s). The zygote reaps its children and
sends each exit status back on the request's connection.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PRELOAD = ("torch", "lightning", "torchvision", "lightning_split.cli", "lightning_split.serve.app",
           "lightning_split.runtime.strategy", "tests.models", "tests.helpers")  # fmt: skip


class Child:
    """One forked child, seen from the process that asked for it (a ``subprocess.Popen`` look-alike)."""

    def __init__(self, connection: socket.socket, pid: int, stdout: io.TextIOBase, stderr: io.TextIOBase) -> None:
        self._connection = connection
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        """The exit status if the child has ended, else ``None``."""
        return self.wait(timeout=0.0) if self.returncode is None else self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the exit status the zygote sends when it reaps the child.

        Raises:
            subprocess.TimeoutExpired: not ended within ``timeout`` (``0``: never raises, returns ``None``).
        """
        with self._lock:
            if self.returncode is not None:
                return self.returncode
            ready, _, _ = select.select([self._connection], [], [], timeout)
            if not ready:
                if timeout == 0.0:
                    return None
                raise subprocess.TimeoutExpired(f"zygote child {self.pid}", timeout or 0.0)
            self.returncode = int(_read_line(self._connection))
            self._connection.close()
            return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Read stdout and stderr to their ends and wait for the child (as ``Popen.communicate``)."""
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.append(self.stderr.read()), daemon=True)
        reader.start()
        stdout = self.stdout.read()
        reader.join(timeout)
        self.wait(timeout)
        return stdout, out[0] if out else ""

    def send_signal(self, number: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, number)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """The requester's side: starts the zygote process on first use and asks it for children."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._folder = tempfile.mkdtemp(prefix="lightning-split-zygote-")
        self._path = os.path.join(self._folder, "socket")
        self._lock = threading.Lock()

    def _start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.zygote", self._path], cwd=ROOT, env=env, stdout=subprocess.PIPE
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"the zygote did not start (said {line!r}, exit status {self._proc.poll()})")

    def spawn(
        self, argv: list[str], cwd: str | Path = ROOT, env: dict[str, str] | None = None, merge_stderr: bool = False
    ) -> Child:
        """Fork a child running ``argv`` (``["-m", module, *args]`` or ``[script, *args]``), text pipes for output.

        ``merge_stderr``: stderr goes to the stdout pipe (``stderr=subprocess.STDOUT``); the
        child's ``stderr`` is then an empty stream.
        """
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        child_err = out_w if merge_stderr else err_w
        null = os.open(os.devnull, os.O_RDONLY)
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.connect(self._path)
            request = {"argv": list(argv), "cwd": str(cwd), "env": dict(os.environ if env is None else env)}
            socket.send_fds(connection, [json.dumps(request).encode() + b"\n"], [null, out_w, child_err])
            pid = int(_read_line(connection))
        finally:
            for fd in (null, out_w, err_w):
                os.close(fd)
        return Child(connection, pid, open(out_r, encoding="utf-8"), open(err_r, encoding="utf-8"))

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=30)
        Path(self._path).unlink(missing_ok=True)
        os.rmdir(self._folder)


def _read_line(connection: socket.socket) -> bytes:
    """One newline-terminated line, read a byte at a time so nothing after it is consumed.

    The requester reads the child's pid and, later, its exit status from the same connection:
    a larger read could swallow the status of a child that ended at once.
    """
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(1)
        if not chunk:
            raise RuntimeError("the zygote closed the connection")
        data += chunk
    return data


# ----------------------------------------------------------------------------- the zygote process


def _serve(path: str) -> None:
    """Import everything once, then fork a child per request and report each child's exit status."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: dict[int, socket.socket] = {}
    print("ready", flush=True)
    while True:
        ready, _, _ = select.select([listener, wake_r], [], [], 1.0)
        if wake_r in ready:
            os.read(wake_r, 4096)
        if listener in ready:
            connection, _ = listener.accept()
            message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
            while not message.endswith(b"\n"):
                message += _read_line(connection)
            request = json.loads(message)
            pid = os.fork()
            if pid == 0:
                for other in (listener, connection, *children.values()):
                    other.close()
                _child(request, fds)
            for fd in fds:
                os.close(fd)
            children[pid] = connection
            connection.sendall(f"{pid}\n".encode())
        _reap(children)


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        connection = children.pop(pid, None)
        if connection is not None:
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            with contextlib.suppress(OSError):
                connection.sendall(f"{code}\n".encode())
            connection.close()


def _child(request: dict[str, Any], fds: list[int]) -> None:
    """Become ``python ARGV...`` in the requester's directory, environment and pipes; never returns."""
    import atexit
    import runpy

    signal.set_wakeup_fd(-1)
    for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_DFL if number != signal.SIGINT else signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 (the process's own streams)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False, buffering=1)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False, buffering=1)  # noqa: SIM115
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if "OMP_NUM_THREADS" in os.environ:
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    argv = request["argv"]
    code = 0
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            sys.path.insert(0, str(Path(argv[0]).resolve().parent))  # as the interpreter does for a script
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def popen(command: list[str], cwd: str | Path | None = None, env: dict[str, str] | None = None, **pipes: Any) -> Child:
    """``subprocess.Popen(command, ...)`` for ``[sys.executable, ...]`` commands, forked from the shared zygote.

    The child always gets pipes; a stream the caller did not ask for (``stdout``/``stderr`` not
    ``subprocess.PIPE``) is drained and dropped, so a chatty child never blocks on a full pipe.
    """
    if command[0] != sys.executable:
        raise ValueError(f"the zygote runs Python commands, not {command[0]!r}")
    merged = pipes.get("stderr") == subprocess.STDOUT
    child = shared().spawn(list(command[1:]), cwd=cwd or os.getcwd(), env=env, merge_stderr=merged)
    for name in ("stdout", "stderr"):
        if pipes.get(name) != subprocess.PIPE:
            threading.Thread(target=getattr(child, name).read, daemon=True).start()
    return child


_SHARED: Zygote | None = None


def shared() -> Zygote:
    """The zygote of this test run (started on first use, closed when the run ends)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = Zygote()
    return _SHARED


def close_shared() -> None:
    global _SHARED
    if _SHARED is not None:
        _SHARED.close()
        _SHARED = None


if __name__ == "__main__":
    _serve(sys.argv[1])
