"""`examples/federated_digits.py` runs: a server, K client processes, accuracy per round against centralised."""

from __future__ import annotations

import pytest

from examples.federated_digits import main
from tests import zygote


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["splitfed", "sequential"])
def test_the_federated_digits_example_prints_accuracy_per_round(mode, capsys):
    # The example's own processes (a server, one per client), forked from the run's zygote.
    result = main(["--clients", "2", "--mode", mode, "--rounds", "2", "--round-steps", "3"], popen=zygote.popen)
    assert len(result["federated"]) == len(result["centralised"]) == 2
    assert all(0.0 <= accuracy <= 1.0 for accuracy in result["federated"] + result["centralised"])
    table = capsys.readouterr().out
    assert "round  federated  centralised" in table and f"{mode}, 2 clients, 3 steps a round" in table
