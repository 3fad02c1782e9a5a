"""The migration cost of a boundary move and the rule that a move must repay it."""

from __future__ import annotations

import math

import pytest

from lightning_split.planning.migration import Migration, migration, move_pays
from lightning_split.planning.profile import Link, NodeCost, Profile


def chain() -> Profile:
    nodes = [NodeCost("x", "input", (), 4096, 0.0, 0.0)]
    previous = "x"
    for i, params in enumerate((1000, 2000, 0, 4000)):
        nodes.append(NodeCost(f"n{i}", "op", (previous,), 1024, 0.01, 0.001, param_bytes=params))
        previous = f"n{i}"
    return Profile(nodes, [previous], Link.from_mbps(8, rtt_ms=10))


def test_the_old_server_part_comes_home_and_the_new_one_goes_out_with_optimizer_state():
    move = migration(chain(), ["n2", "n3"], ["n1", "n2", "n3"], optimizer_slots=2)
    assert move == Migration(down_bytes=3 * 4000, up_bytes=3 * (2000 + 4000), round_trips=2)
    link = Link.from_mbps(8, rtt_ms=10)  # 1e6 bytes/s each way
    assert move.seconds(link) == pytest.approx(12000 / 1e6 + 18000 / 1e6 + 2 * 0.01)


def test_device_only_on_either_side_costs_one_round_trip_and_no_move_costs_nothing():
    assert migration(chain(), [], ["n3"], optimizer_slots=0) == Migration(0, 4000, 1)
    assert migration(chain(), ["n3"], [], optimizer_slots=1) == Migration(8000, 0, 1)
    assert migration(chain(), ["n3"], ["n3"], optimizer_slots=2) == Migration(0, 0, 0)
    assert Migration(0, 0, 0).seconds(Link.from_mbps(1, rtt_ms=50)) == 0.0


@pytest.mark.parametrize(
    ("old_s", "new_s", "horizon", "move_s", "pays"),
    [
        (0.2, 0.1, 10, 0.5, True),  # saves 1.0 s over 10 steps
        (0.2, 0.1, 5, 0.5, False),  # saves exactly the move: not worth it
        (0.2, 0.1, 2, 0.5, False),
        (0.2, 0.1, math.inf, 1e9, True),  # an unbounded horizon repays any move that saves
        (0.1, 0.1, math.inf, 0.0, False),  # no saving, no move
        (0.1, 0.2, 100, 0.0, False),
    ],
)
def test_a_move_pays_when_the_saving_over_the_horizon_exceeds_its_migration(old_s, new_s, horizon, move_s, pays):
    assert move_pays(old_s, new_s, horizon, move_s) is pays
