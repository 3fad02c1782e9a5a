"""Many devices, one model: ``Federation`` and the device's side of a federated run.

``SplitStrategy(federation=Federation(...))`` makes this device one of ``clients`` that train
one model through one server (``docs``: README, "Many devices, one model"):

- ``mode="sequential"`` (vanilla split learning): turns in client order, ``round_steps``
  optimizer steps each; the server part is shared and the device part (parameters, buffers,
  the device optimizers' state) passes from client to client through the server, sealed
  with ``key`` (:mod:`lightning_split.transport.sealing`) so the server cannot read it.
- ``mode="splitfed"`` (SplitFed V1): all at once, each on its own server-part copy; every
  ``round_steps`` optimizer steps and at the end, both parts become their average over the
  clients weighted by the samples each trained on that round. Optimizer states stay each
  client's.

:class:`FederatedRun` is what the strategy calls at its hooks: after the session opens, at
each batch start, after each optimizer step, and before the session closes. A client
waiting for its turn or round blocks there, logging whom it waits for.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from lightning_split.runtime.device import SplitRuntime
from lightning_split.runtime.metrics import log_metrics
from lightning_split.transport import federation as fed
from lightning_split.transport import wire
from lightning_split.transport.errors import ProtocolError
from lightning_split.transport.sealing import Seal, SealError

__all__ = ["FederatedRun", "Federation"]

log = logging.getLogger("lightning_split")


@dataclass(frozen=True)
class Federation:
    """This device's place in a federation (SPEC section 4b).

    Args:
        group: the federation's name on the server (letters, digits, ``_.-``).
        clients: how many clients take part.
        client: this one's index, ``0 .. clients - 1``; client 0's initial weights are the federation's.
        mode: ``"sequential"`` or ``"splitfed"``.
        round_steps: optimizer steps per turn (sequential) or per round (splitfed).
        key: the secret the clients share (32 random bytes, or a passphrase of at least 16
            characters); sequential mode seals the relayed device part with it. Required there,
            unused in splitfed (whose averaging needs the server to see the device parts).
        timeout: seconds the server waits for an absent client before it skips its turn
            (sequential) or leaves it out of the round's average (splitfed).
    """

    group: str
    clients: int
    client: int
    mode: str = "sequential"
    round_steps: int = 1
    key: bytes | str | None = None
    timeout: float = 300.0

    def __post_init__(self) -> None:
        try:
            self.join_op()
        except ProtocolError as exc:
            raise ValueError(f"Federation: {exc}") from None
        if self.mode == "sequential" and not self.key:
            raise ValueError(
                "Federation(mode='sequential') relays the device part through the server sealed with a key the "
                "clients share: pass the same key=... to every client (e.g. secrets.token_bytes(32), or a "
                "passphrase of 16+ characters)"
            )

    def join_op(self) -> fed.FedJoin:
        """The ``fed_join`` op for this federation."""
        return fed.FedJoin(
            group=self.group,
            clients=self.clients,
            client=self.client,
            mode=self.mode,
            round_steps=self.round_steps,
            timeout=float(self.timeout),
        )


class FederatedRun:
    """The device's side of one federated fit: joins, waits, hands over, averages.

    The strategy calls :meth:`start` once the session is open, :meth:`before_batch` at each
    training batch, :meth:`after_step` after each optimizer step, :meth:`record_loss` with each
    training step's output and :meth:`finish` before the session closes.
    """

    def __init__(self, federation: Federation) -> None:
        self.federation = federation
        self.seal = Seal(federation.key, federation.group) if federation.mode == "sequential" else None
        self.runtime: SplitRuntime | None = None
        self.trainer: Any = None
        self.turn = 0  # sequential: the federation's turn this client trains (or trained last)
        self.newest = -1  # sequential: the newest turn this client knows was completed (sealed or opened)
        self.round = 0  # splitfed: the last round averaged; sequential: the turns this client completed
        self.steps = 0  # optimizer steps since the turn or round began
        self.samples = 0
        self.losses: list[float] = []
        self.must_wait = False

    @property
    def sequential(self) -> bool:
        return self.federation.mode == "sequential"

    # -- the strategy's hooks ------------------------------------------------------------

    def start(self, runtime: SplitRuntime, trainer: Any) -> None:
        """Join the federation and wait for the first turn (sequential) or the initial model (splitfed)."""
        if not runtime.is_split:
            raise ValueError("a federation needs a split model: the cut leaves nothing on the server")
        self.runtime, self.trainer = runtime, trainer
        (joined,) = self._call(self.federation.join_op())
        log.info(
            "lightning-split federation %s: client %d joined (clients joined: %s)",
            self.federation.group,
            self.federation.client,
            "restored" if joined is None else joined.joined,  # None: joined before a server restart
        )
        if not self.sequential:  # round 0 is client 0's model (the server ignores the others' round 0)
            self._call(fed.FedSubmit(round=0, samples=0, sealed=_EMPTY, state=self._device_state()))
        self._wait()

    def before_batch(self, batch: Any) -> None:
        """Wait for the next turn if one is due; count the batch's samples."""
        from lightning.pytorch.utilities.data import extract_batch_size  # here: importing Lightning registers us

        if self.sequential and self.steps >= self.federation.round_steps and self.runtime is not None:
            self._end_round()  # here, not after the step: the learning-rate schedulers have stepped since
        if self.must_wait and self.runtime is not None:
            self._wait()
        try:
            self.samples += int(extract_batch_size(batch))
        except Exception:  # a batch Lightning cannot size counts as one sample
            self.samples += 1

    def record_loss(self, output: Any) -> None:
        loss = output.get("loss") if isinstance(output, dict) else output
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self.losses.append(float(loss.detach()))

    def after_step(self) -> None:
        """After ``round_steps`` optimizer steps: average (splitfed); sequential hands over at the next batch."""
        if self.runtime is None:
            return
        self.steps += 1
        if self.steps >= self.federation.round_steps and not self.sequential:
            self._end_round()

    def finish(self) -> None:
        """Before the session closes: a turn or round cut short by the end of the fit ends here."""
        if self.runtime is not None and self.steps > 0:
            self._end_round()
        self.runtime = None

    # -- turns and rounds ----------------------------------------------------------------

    def _end_round(self) -> None:
        loss = sum(self.losses) / len(self.losses) if self.losses else None
        self.round += 1
        if self.sequential:
            assert self.seal is not None
            payload = {"state": self._device_state(), "optimizers": self._optimizer_state(), **self._schedules()}
            sealed = self.seal.seal(payload, turn=self.turn)
            self._call(fed.FedSubmit(round=self.turn, samples=self.samples, sealed=sealed, loss=loss))
            self.newest = self.turn
            self.must_wait = True
        else:
            state = self._device_state()
            self._call(fed.FedSubmit(round=self.round, samples=self.samples, sealed=_EMPTY, state=state, loss=loss))
            self._wait()
        metrics = {"split/round": float(self.round)}
        if loss is not None:
            metrics["split/round_loss"] = loss
        log_metrics(self.trainer, metrics)
        self.steps, self.samples, self.losses = 0, 0, []

    def _wait(self) -> None:
        """Block until the server says it is this client's time; install the model it hands over."""
        group, client = self.federation.group, self.federation.client
        hold = False  # the first answer comes at once: if it is not yet time, the log says for whom
        while True:
            (reply,) = self._call(fed.FedWait(round=0 if self.sequential else self.round, hold=hold))
            if reply is None:  # applied before a server restart, its answer lost with it: ask again
                hold = False
                continue
            hold = True
            if reply.skipped:
                log.warning(
                    "lightning-split federation %s: client(s) %s %s",
                    group,
                    reply.skipped,
                    "were skipped (absent past the timeout)" if self.sequential else "were left out of the average",
                )
            if reply.ready:
                break
            log.info(
                "lightning-split federation %s: client %d waits for client(s) %s", group, client, reply.waiting_for
            )
        self.must_wait = False
        if self.sequential:
            self._take_turn(reply)
            log.info("lightning-split federation %s: client %d trains turn %d", group, client, self.turn)
        else:
            self.round = max(self.round, reply.round)  # a client left out of rounds catches up with the newest
            self._load_device_state(reply.state)

    def _take_turn(self, reply: fed.FedWaitReply) -> None:
        """Install the device part the server relays for turn ``reply.round``, refusing an older one than known."""
        assert self.seal is not None
        if not reply.sealed.numel():
            if self.newest >= 0:
                raise SealError(
                    f"the server handed over no device part for turn {reply.round}, but this client knows turn "
                    f"{self.newest} was completed: a server going back to the initial model is refused"
                )
        else:
            sealed_at, payload = self.seal.open(reply.sealed, newest=self.newest, before=reply.round)
            self._load_device_state(payload["state"])
            self._load_optimizer_state(payload["optimizers"])
            self._load_schedules(payload)
            self.newest = sealed_at
        self.turn = reply.round

    def _call(self, op: Any) -> list[Any]:
        assert self.runtime is not None and self.runtime.remote is not None
        return self.runtime.remote.call([op])

    # -- the device part -----------------------------------------------------------------

    def _device_keys(self) -> Iterable[str]:
        assert self.runtime is not None
        server = set(self.runtime.server_state_keys)
        return [key for key in self.runtime.tensors_by_key if key not in server]

    def _device_state(self) -> dict[str, torch.Tensor]:
        assert self.runtime is not None
        return {key: self.runtime.tensors_by_key[key].detach().cpu().clone() for key in self._device_keys()}

    def _load_device_state(self, state: dict[str, torch.Tensor]) -> None:
        assert self.runtime is not None
        device = set(self._device_keys())
        with torch.no_grad():
            for key, value in state.items():
                if key not in device:
                    raise ValueError(f"the federation's device part has {key!r}, which is not on this device")
                tensor = self.runtime.tensors_by_key[key]
                if tensor.shape != value.shape:
                    raise ValueError(f"the federation's {key!r} is {tuple(value.shape)}, here {tuple(tensor.shape)}")
                tensor.copy_(value)

    def _optimizer_state(self) -> list[dict[str, dict[str, Any]]]:
        assert self.runtime is not None
        device = set(self._device_keys())
        states = []
        for optimizer in self.runtime.optimizers:
            by_key = {}
            for param, state in optimizer.state.items():
                key = self.runtime.key_of.get(id(param))
                if key in device and state:
                    by_key[key] = {name: _cpu(value) for name, value in state.items()}
            states.append(by_key)
        return states

    def _load_optimizer_state(self, states: list[dict[str, dict[str, Any]]]) -> None:
        assert self.runtime is not None
        device = set(self._device_keys())
        for optimizer, by_key in zip(self.runtime.optimizers, states):
            for group in optimizer.param_groups:
                for param in group["params"]:
                    key = self.runtime.key_of.get(id(param))
                    if key not in device:
                        continue
                    optimizer.state.pop(param, None)
                    if key in by_key:
                        optimizer.state[param] = {
                            name: _placed(value, param.device) for name, value in by_key[key].items()
                        }

    def _schedules(self) -> dict[str, Any]:
        """The learning rates and the learning-rate schedulers' state, which pass with the model (sequential)."""
        assert self.runtime is not None
        lrs = [[float(group["lr"]) for group in optimizer.param_groups] for optimizer in self.runtime.optimizers]
        configs = getattr(self.trainer, "lr_scheduler_configs", None) or []
        schedulers = [dict(config.scheduler.state_dict()) for config in configs]
        for state in schedulers:
            try:
                wire.encode({"scheduler": state})
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"a federation relays the learning-rate schedulers' state between clients, and this one's "
                    f"cannot be sent ({exc}): use a scheduler whose state_dict() holds numbers, strings, lists, "
                    "dicts and tensors only"
                ) from None
        return {"lrs": lrs, "schedulers": schedulers}

    def _load_schedules(self, payload: dict[str, Any]) -> None:
        assert self.runtime is not None
        for optimizer, lrs in zip(self.runtime.optimizers, payload.get("lrs", [])):
            for group, lr in zip(optimizer.param_groups, lrs):
                group["lr"] = lr
        configs = getattr(self.trainer, "lr_scheduler_configs", None) or []
        for config, state in zip(configs, payload.get("schedulers", [])):
            config.scheduler.load_state_dict(state)


_EMPTY = torch.zeros(0, dtype=torch.uint8)


def _placed(value: Any, device: torch.device) -> Any:
    """Optimizer state as ``torch.optim`` keeps it: tensors on the parameter's device, 0-d ``step`` on the CPU."""
    if not isinstance(value, torch.Tensor):
        return value
    return value.to(device).clone() if value.dim() else value.clone()


def _cpu(value: Any) -> Any:
    return value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value
