"""What moving the boundary costs, and whether a move pays for itself (plain data, no torch).

A live re-plan (``SplitStrategy(replan_every=N)``) that moves the boundary migrates state the
way the runtime does it: the old server part's parameters, buffers and optimizer state come
home in one request, then the new server part's go out with the new session's hello. So a
move costs

    down_bytes / downlink + up_bytes / uplink + round_trips x rtt

where ``down_bytes`` is the old server part's state, ``up_bytes`` the new one's, each
``(1 + optimizer_slots) x param_bytes`` of its nodes, and one round trip for each side of the
move that has a server part. A move pays when the step time it saves, summed over the steps it
is expected to stay (the re-planning interval by default), exceeds that: on a slow link a
large model's state can take longer to move than all the steps until the next re-plan save.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lightning_split.planning.profile import Link, Profile

__all__ = ["Migration", "migration", "move_pays"]


@dataclass(frozen=True)
class Migration:
    """The state a boundary move sends each way.

    Attributes:
        down_bytes: the old server part's parameters, buffers and optimizer state, sent home.
        up_bytes: the new server part's, sent out.
        round_trips: requests the move makes (one per side with a server part).
    """

    down_bytes: int
    up_bytes: int
    round_trips: int

    def seconds(self, link: Link) -> float:
        """Predicted time of the move on ``link``."""
        return (
            self.down_bytes / link.downlink_bytes_per_s
            + self.up_bytes / link.uplink_bytes_per_s
            + self.round_trips * link.rtt_s
        )


def migration(
    profile: Profile, old_server: Iterable[str], new_server: Iterable[str], optimizer_slots: int
) -> Migration:
    """The move from server part ``old_server`` to ``new_server`` (node names), as the runtime makes it.

    ``param_bytes`` of a node counts the state it reads; a node without it counts none.
    No move (the same server part) costs nothing.
    """
    old, new = frozenset(old_server), frozenset(new_server)
    if old == new:
        return Migration(0, 0, 0)
    state = {node.name: (node.param_bytes or 0) * (1 + optimizer_slots) for node in profile.nodes}
    return Migration(
        down_bytes=sum(state.get(name, 0) for name in old),
        up_bytes=sum(state.get(name, 0) for name in new),
        round_trips=int(bool(old)) + int(bool(new)),
    )


def move_pays(old_step_s: float, new_step_s: float, horizon_steps: float, move_s: float) -> bool:
    """Whether ``horizon_steps`` steps at ``new_step_s`` instead of ``old_step_s`` save more than ``move_s``.

    ``horizon_steps`` may be ``math.inf``: then any saving pays.
    """
    saving = old_step_s - new_step_s
    return saving > 0 and saving * horizon_steps > move_s
