"""Minimum-cost one-to-one assignment (Hungarian / Kuhn-Munkres), numpy only.

tpnet.core cannot use scipy (the torch-free install has no scipy), and the longitudinal matching (issue #18) needs
an exact assignment of the few trigger points of two visits: greedy nearest-first pairing is not optimal when two
TrPs compete for one partner. This is the O(n^2 m) shortest-augmenting-path form with row and column potentials
(Kuhn 1955, Munkres 1957; Jonker-Volgenant style): exact for any real costs, any rectangular shape.
"""

from __future__ import annotations

import numpy as np


def min_cost_assignment(cost: np.ndarray) -> list[tuple[int, int]]:
    """The (row, column) pairs of a one-to-one assignment of an (N, M) cost matrix with the smallest total cost.

    min(N, M) pairs are returned, sorted by row. Costs must be finite (use a large finite cost for a forbidden
    pair and drop such pairs afterwards, as ``tpnet.core.longitudinal.match_visits`` does)."""
    matrix = np.asarray(cost, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"cost must be a 2-D matrix; got shape {matrix.shape}")
    if matrix.size == 0:
        return []
    if not np.all(np.isfinite(matrix)):
        raise ValueError("cost must be finite (a forbidden pair gets a large finite cost)")
    transposed = matrix.shape[0] > matrix.shape[1]
    if transposed:  # the algorithm assigns every row: rows must be the shorter side
        matrix = matrix.T
    n, m = matrix.shape
    # 1-based arrays with a virtual column 0, as in the textbook form: u, v potentials; match[j] = row of column j.
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    match = np.zeros(m + 1, dtype=np.int64)
    way = np.zeros(m + 1, dtype=np.int64)
    for row in range(1, n + 1):
        match[0] = row
        column = 0
        min_slack = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:  # grow the alternating tree until it reaches a free column
            used[column] = True
            i = match[column]
            free = ~used[1:]
            slack = matrix[i - 1] - u[i] - v[1:]
            better = free & (slack < min_slack[1:])
            min_slack[1:][better] = slack[better]
            way[1:][better] = column
            candidates = np.where(free, min_slack[1:], np.inf)
            nxt = int(np.argmin(candidates)) + 1
            delta = candidates[nxt - 1]
            u[match[used]] += delta
            v[used] -= delta
            min_slack[1:][free] -= delta
            column = nxt
            if match[column] == 0:
                break
        while column:  # flip the augmenting path
            previous = way[column]
            match[column] = match[previous]
            column = previous
    pairs = [(int(match[j]) - 1, j - 1) for j in range(1, m + 1) if match[j] != 0]
    if transposed:
        pairs = [(c, r) for r, c in pairs]
    return sorted(pairs)
