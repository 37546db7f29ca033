"""The exact assignment: the brute-force optimum on small matrices of every shape, and its input checks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tpnet.core.assignment import min_cost_assignment


def _brute_force_total(cost: np.ndarray) -> float:
    n, m = cost.shape
    k = min(n, m)
    return min(
        sum(cost[r, c] for r, c in zip(rows, cols, strict=True))
        for rows in itertools.combinations(range(n), k)
        for cols in itertools.permutations(range(m), k)
    )


def test_matches_brute_force_on_every_small_shape():
    rng = np.random.default_rng(0)
    for trial in range(120):
        n, m = (int(v) for v in rng.integers(1, 6, size=2))
        cost = rng.random((n, m)) * 10.0
        if trial % 3 == 0:
            cost = np.round(cost)  # ties
        pairs = min_cost_assignment(cost)
        assert len(pairs) == min(n, m)
        assert len({r for r, _ in pairs}) == len(pairs) and len({c for _, c in pairs}) == len(pairs)
        assert sum(cost[r, c] for r, c in pairs) == pytest.approx(_brute_force_total(cost))


def test_beats_greedy_where_two_rows_compete_for_one_column():
    # Greedy takes the cheapest pair (0, 0) first and must then pay 10 for (1, 1); the optimum pays 2 + 2.
    cost = np.array([[1.0, 2.0], [2.0, 10.0]])
    assert min_cost_assignment(cost) == [(0, 1), (1, 0)]


def test_empty_and_invalid_inputs():
    assert min_cost_assignment(np.zeros((0, 3))) == []
    with pytest.raises(ValueError, match="finite"):
        min_cost_assignment(np.array([[1.0, np.inf]]))
    with pytest.raises(ValueError, match="2-D"):
        min_cost_assignment(np.zeros(3))
