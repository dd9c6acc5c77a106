"""Replay buffers in preallocated numpy arrays: uniform, and prioritized (Schaul et al. 2016) over a sum tree.

A stored transition is already n-step: (obs, action, return R, next_obs, discount, vol_target) where
``discount`` is gamma^k when the target bootstraps from next_obs after k steps and 0 when the episode
terminated in between, so the TD target is ``R + discount * max_a Q_target(next_obs, a)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Batch:
    obs: np.ndarray
    actions: np.ndarray
    returns: np.ndarray
    next_obs: np.ndarray
    discounts: np.ndarray
    vol_targets: np.ndarray
    indices: np.ndarray
    weights: np.ndarray
    obs_pair: np.ndarray | None = None
    """(2, B, obs_dim): obs and next_obs in one array (``obs`` and ``next_obs`` are its two views), the input of
    the stacked online/target pass."""


class SumTree:
    """Binary sum tree over ``capacity`` leaves (rounded up to a power of two) in one float64 array.

    Node i (1-based heap order) holds the sum of its children 2i and 2i+1; leaves live at [size, 2*size).
    Updates and prefix-sum searches cost O(log N) and run vectorised over a whole batch of indices.
    """

    def __init__(self, capacity: int) -> None:
        self.size = 1 << max(0, int(capacity - 1).bit_length())
        self.depth = self.size.bit_length() - 1
        self.tree = np.zeros(2 * self.size, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.tree[1])

    def leaves(self, indices: np.ndarray | None = None) -> np.ndarray:
        base = self.tree[self.size:]
        return base if indices is None else base[indices]

    def update(self, indices: np.ndarray, values: np.ndarray) -> None:
        """Set leaf values (duplicates: the last one wins) and recompute their ancestors level by level."""
        nodes = np.asarray(indices, dtype=np.int64) + self.size
        tree = self.tree
        tree[nodes] = values
        pairs = tree.reshape(-1, 2)  # a view: row k holds nodes 2k and 2k+1, the children of node k
        for _ in range(self.depth):  # a repeated parent gets the same (correct) sum twice
            nodes >>= 1
            tree[nodes] = pairs[nodes].sum(axis=1)

    def set_one(self, index: int, value: float) -> None:
        """Scalar fast path of ``update`` for one insertion per env step."""
        tree = self.tree
        node = index + self.size
        tree[node] = value
        node >>= 1
        while node:
            tree[node] = tree[2 * node] + tree[2 * node + 1]
            node >>= 1

    def find(self, prefix_sums: np.ndarray) -> np.ndarray:
        """Leaf index i with cumsum(leaves)[i-1] < u <= cumsum(leaves)[i] for every u, all at once.

        The top levels (up to 1,024 nodes) in one step: the first node of that level whose running sum reaches u
        (``searchsorted`` on its cumsum), then one binary descent step per remaining level."""
        u = np.asarray(prefix_sums, dtype=np.float64)
        tree = self.tree
        top = min(self.depth, 10)
        first = 1 << top
        sums = np.cumsum(tree[first:2 * first])
        node = np.minimum(np.searchsorted(sums, u, side="left"), first - 1)
        u = u - np.where(node > 0, sums[node - 1], 0.0)
        node += first
        for _ in range(self.depth - top):
            node <<= 1
            left_sum = tree[node]
            go_right = u > left_sum
            u -= left_sum * go_right
            node += go_right
        return node - self.size

    def load(self, leaf_values: np.ndarray) -> None:
        """Rebuild the whole tree from leaf values."""
        self.tree[:] = 0.0
        self.tree[self.size:self.size + len(leaf_values)] = leaf_values
        for level in range(self.depth - 1, -1, -1):
            lo, hi = 1 << level, 2 << level
            self.tree[lo:hi] = self.tree[2 * lo:2 * hi:2] + self.tree[2 * lo + 1:2 * hi:2]


class ReplayBuffer:
    """Uniform replay: a ring buffer of n-step transitions in preallocated arrays.

    :param capacity: transitions kept (the oldest is overwritten).
    :param obs_dim: length of a flat observation.
    :param action_dims: integers per action (2 for (price, quantity)).
    """

    prioritized = False

    def __init__(self, capacity: int, obs_dim: int, action_dims: int) -> None:
        self.capacity = int(capacity)
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = np.zeros((capacity, action_dims), dtype=np.int64)
        self.returns = np.zeros(capacity, dtype=np.float32)
        self.discounts = np.zeros(capacity, dtype=np.float32)
        self.vol_targets = np.full(capacity, np.nan, dtype=np.float32)
        self.pos = 0
        self.size = 0
        self._out: Batch | None = None

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, action: np.ndarray, ret: float, next_obs: np.ndarray, discount: float,
            vol_target: float) -> int:
        i = self.pos
        self.obs[i] = obs
        self.next_obs[i] = next_obs
        self.actions[i] = action
        self.returns[i] = ret
        self.discounts[i] = discount
        self.vol_targets[i] = vol_target
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        return i

    def _gather(self, idx: np.ndarray, weights: np.ndarray) -> Batch:
        """The transitions at ``idx``, copied into arrays reused by every batch of this size (a returned
        Batch is valid until the next ``sample``)."""
        out = self._out
        if out is None or len(out.returns) != len(idx):
            n, obs_dim = len(idx), self.obs.shape[1]
            pair = np.empty((2, n, obs_dim), np.float32)
            out = self._out = Batch(pair[0], np.empty((n, self.actions.shape[1]), np.int64), np.empty(n, np.float32),
                                    pair[1], np.empty(n, np.float32), np.empty(n, np.float32), idx,
                                    np.empty(n, np.float32), pair)
        for name in ("obs", "actions", "returns", "next_obs", "discounts", "vol_targets"):
            np.take(getattr(self, name), idx, axis=0, out=getattr(out, name))
        out.indices = idx
        out.weights[:] = weights
        return out

    def sample(self, batch_size: int, rng: np.random.Generator, beta: float = 1.0) -> Batch:
        idx = rng.integers(0, self.size, size=batch_size)
        return self._gather(idx, np.ones(batch_size, dtype=np.float32))

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        """Uniform replay ignores priorities."""

    def mean_vol_target(self) -> float:
        v = self.vol_targets[:self.size]
        v = v[np.isfinite(v)]
        return float(v.mean()) if v.size else float("nan")

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The filled slots as they lie in the ring (so that a resumed run samples exactly the same batches)."""
        n = self.size
        return {"obs": self.obs[:n], "next_obs": self.next_obs[:n], "actions": self.actions[:n],
                "returns": self.returns[:n], "discounts": self.discounts[:n], "vol_targets": self.vol_targets[:n],
                "pos": np.array([self.pos], dtype=np.int64)}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        n = len(arrays["returns"])
        pos = int(arrays["pos"][0])
        if n > self.capacity or (pos != n % self.capacity and n != self.capacity):
            raise ValueError(f"checkpoint replay buffer ({n} transitions, position {pos}) does not fit a buffer "
                             f"of size {self.capacity}")
        for name in ("obs", "next_obs", "actions", "returns", "discounts", "vol_targets"):
            target = getattr(self, name)
            if arrays[name].shape[1:] != target.shape[1:]:
                raise ValueError(f"replay array {name!r} has shape {arrays[name].shape}, expected (n,) + "
                                 f"{target.shape[1:]}")
            target[:n] = arrays[name]
        self.size = n
        self.pos = pos % self.capacity


class PrioritizedReplayBuffer(ReplayBuffer):
    """Proportional prioritized replay: P(i) = p_i^alpha / sum_k p_k^alpha, p_i = |TD error| + eps.

    New transitions get the largest priority seen so far. Sampling is stratified (one uniform draw in each
    of ``batch_size`` equal slices of the total mass) and done for the whole batch in one tree descent.
    Importance weights w_i = (N * P(i))^-beta, divided by the largest weight in the batch.
    """

    prioritized = True

    def __init__(self, capacity: int, obs_dim: int, action_dims: int, alpha: float = 0.6, eps: float = 1e-6) -> None:
        super().__init__(capacity, obs_dim, action_dims)
        self.alpha = float(alpha)
        self.eps = float(eps)
        self.tree = SumTree(capacity)
        self.max_priority = 1.0

    def add(self, obs: np.ndarray, action: np.ndarray, ret: float, next_obs: np.ndarray, discount: float,
            vol_target: float) -> int:
        i = super().add(obs, action, ret, next_obs, discount, vol_target)
        self.tree.set_one(i, self.max_priority ** self.alpha)
        return i

    def sample(self, batch_size: int, rng: np.random.Generator, beta: float = 1.0) -> Batch:
        total = self.tree.total
        bounds = (np.arange(batch_size) + rng.random(batch_size)) * (total / batch_size)
        idx = self.tree.find(np.minimum(bounds, total * (1.0 - 1e-12)))
        idx = np.minimum(idx, self.size - 1)  # guards against rounding at the upper edge
        probs = self.tree.leaves(idx) / total
        weights = (self.size * probs) ** (-beta)
        weights = (weights / weights.max()).astype(np.float32)
        return self._gather(idx, weights)

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        priorities = np.abs(td_errors).astype(np.float64) + self.eps
        self.max_priority = max(self.max_priority, float(priorities.max()))
        self.tree.update(indices, priorities ** self.alpha)

    def state_arrays(self) -> dict[str, np.ndarray]:
        arrays = super().state_arrays()
        arrays["priorities"] = self.tree.leaves()[:self.size].copy()
        arrays["max_priority"] = np.array([self.max_priority])
        return arrays

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        super().load_state_arrays(arrays)
        self.tree.load(np.asarray(arrays["priorities"], dtype=np.float64))
        self.max_priority = float(arrays["max_priority"][0])
