"""DeepScalper's networks: macro and micro encoders, a Branching Dueling Q-Network and the volatility head.

Input: TradingEnv's flat observation, ``window * n_features`` technical features (oldest bar first) followed by
``n_private`` private values (position, unrealised P&L, cash, time left).

- macro encoder: an MLP over the technical features of the most recent ``macro_window`` bars (the whole window
  when 0; the indicators already summarise the longer past, and a narrow input generalises from fewer bars);
- micro encoder: a recurrent net over the most recent ``micro_window`` bars, each step fed the bar's features
  and the agent's private state; its last hidden state is the micro embedding;
- market embedding = [macro, micro] (concatenated);
- BDQ (Tavakoli et al. 2018, as used by the paper): one shared state value V(s) and one advantage head per
  branch, Q_d(s, a) = V(s) + A_d(s, a) - mean_a' A_d(s, a');
- auxiliary head: one linear layer from the market embedding to the future volatility (risk-aware task).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class MinGRU(nn.Module):
    """A GRU whose update gate and candidate depend on the current input only (Feng et al. 2024).

    h_t = (1 - z_t) * h_{t-1} + z_t * c_t with z_t = sigmoid(g_t), (g_t, c_t) = W x_t + b and h_0 = 0, so
    h_T = sum_t w_t c_t with w_t = z_t prod_{s>t} (1 - z_s). All steps at once, in log space: log z_t =
    g_t - softplus(g_t) and log(1 - z_s) = -softplus(g_s), so log w_t = g_t - sum_{s>=t} softplus(g_s) (one
    triangular matmul), without a Python loop over time. Returns the last hidden state only.
    """

    def __init__(self, input_size: int, hidden_size: int, steps: int) -> None:
        super().__init__()
        self.proj = nn.Linear(input_size, 2 * hidden_size)
        # upper[t, s] = 1 when s >= t: (upper @ x)[t] = sum_{s >= t} x[s]
        self.register_buffer("upper", torch.triu(torch.ones(steps, steps)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_logits, candidate = F.linear(x, self.proj.weight, self.proj.bias).chunk(2, dim=-1)
        log_weight = gate_logits - torch.matmul(self.upper, F.softplus(gate_logits))
        return (torch.exp(log_weight) * candidate).sum(1)


class DeepScalperNet(nn.Module):
    """Encoders + Branching Dueling Q-Network + volatility head.

    The heads are evaluated together: one linear layer from the market embedding gives the hidden layer of
    the value head and of every advantage head plus the one-layer volatility prediction; one batched matmul
    gives V and every A_d. Branches of different sizes are padded to the largest (padding never counts in
    the mean nor wins the max).

    :param window: bars in the observation window.
    :param n_features: technical features per bar.
    :param n_private: private values at the end of the observation.
    :param branch_sizes: number of sub-actions per branch (e.g. [n_price_offsets, n_quantities]).
    :param hidden_size: width of every layer.
    :param rnn: "gru", "lstm" or "mingru".
    :param micro_window: most recent bars for the micro encoder (0 or >= window = all).
    :param macro_window: most recent bars for the macro encoder (0 or >= window = all).
    :param time_left_input: feed the last private value (TradingEnv: time left in the episode) to the micro
        encoder; False feeds 0 in its place.
    """

    def __init__(self, window: int, n_features: int, n_private: int, branch_sizes: list[int], hidden_size: int,
                 rnn: str = "gru", micro_window: int = 0, macro_window: int = 0, time_left_input: bool = True) -> None:
        super().__init__()
        self.window, self.n_features, self.n_private = window, n_features, n_private
        self.micro_window = window if micro_window <= 0 else min(micro_window, window)
        self.macro_window = window if macro_window <= 0 else min(macro_window, window)
        self.branch_sizes = list(branch_sizes)
        self.rnn_kind = rnn
        h = self.hidden_size = hidden_size
        self.macro = nn.Sequential(nn.Linear(self.macro_window * n_features, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())
        micro_in = n_features + n_private
        if rnn == "gru":
            self.micro: nn.Module = nn.GRU(micro_in, h, batch_first=True)
        elif rnn == "lstm":
            self.micro = nn.LSTM(micro_in, h, batch_first=True)
        elif rnn == "mingru":
            self.micro = MinGRU(micro_in, h, self.micro_window)
        else:
            raise ValueError(f"unknown rnn {rnn!r}; use gru, lstm or mingru")
        n_heads, n_max = 1 + len(self.branch_sizes), max(self.branch_sizes)
        self.heads_in = nn.Linear(2 * h, n_heads * h + 1)
        bound = 1.0 / math.sqrt(h)
        self.heads_out_weight = nn.Parameter(torch.empty(n_heads, h, n_max).uniform_(-bound, bound))
        self.heads_out_bias = nn.Parameter(torch.empty(n_heads, 1, n_max).uniform_(-bound, bound))
        valid = torch.zeros(len(self.branch_sizes), 1, n_max)
        # centre[k] maps head k's outputs to what enters Q: the identity for the value head; for branch d,
        # A_d - mean(A_d) over its real sub-actions (0 on padding). The map is linear, so it is applied to the
        # heads' weights (one small bmm) instead of to every batch's advantages (fewer ops to run and differentiate)
        centre = torch.zeros(n_heads, n_max, n_max)
        centre[0] = torch.eye(n_max)
        for d, n in enumerate(self.branch_sizes):
            valid[d, :, :n] = 1.0
            centre[1 + d, :n, :n] = torch.eye(n) - 1.0 / n
        self.padded = any(n != n_max for n in self.branch_sizes)
        self.register_buffer("valid", valid, persistent=False)
        self.register_buffer("counts", valid.sum(-1, keepdim=True), persistent=False)
        self.register_buffer("centre", centre, persistent=False)
        self.register_buffer("pad", (valid - 1.0) * 1e9, persistent=False)
        private_mask = torch.ones(n_private)
        if not time_left_input and n_private:
            private_mask[-1] = 0.0
        self.register_buffer("private_mask", private_mask, persistent=False)

    def embed(self, obs: torch.Tensor) -> torch.Tensor:
        """Market embedding [macro, micro] of a batch of flat observations (B, obs_dim)."""
        n_market = self.window * self.n_features
        features = obs[:, :n_market]
        private = obs[:, n_market:n_market + self.n_private] * self.private_mask
        # the layers are called directly (F.linear) rather than through nn.Module.__call__: the same parameters
        # and state-dict keys, without the hook machinery's Python overhead on every forward of every update
        first, second = self.macro[0], self.macro[2]
        macro = features[:, (self.window - self.macro_window) * self.n_features:]
        macro = F.relu(F.linear(F.relu(F.linear(macro, first.weight, first.bias)), second.weight, second.bias))
        bars = features.reshape(-1, self.window, self.n_features)[:, -self.micro_window:]
        seq = torch.cat([bars, private.unsqueeze(1).expand(-1, self.micro_window, -1)], dim=2)
        if self.rnn_kind == "mingru":
            micro = self.micro.forward(seq)
        else:
            _, state = self.micro(seq)
            micro = (state[0] if isinstance(state, tuple) else state)[-1]
        return torch.cat([macro, micro], dim=1)

    def heads(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, vol): Q of shape (branches, B, max branch size) = V + A_d - mean(A_d), padded entries at
        -1e9; vol of shape (B,), the auxiliary (scaled) future-volatility prediction."""
        z = F.linear(embedding, self.heads_in.weight, self.heads_in.bias)
        vol = z[:, -1]
        hidden = F.relu(z[:, :-1]).view(z.shape[0], -1, self.hidden_size).transpose(0, 1)
        # (1 + D, B, n_max): out[0, :, 0] = V, out[1 + d] = A_d - mean(A_d) (the centring folded into the weights)
        out = torch.baddbmm(torch.bmm(self.heads_out_bias, self.centre), hidden,
                            torch.bmm(self.heads_out_weight, self.centre))
        q = out[1:] + out[:1, :, :1]
        return (q + self.pad if self.padded else q), vol

    def q_values(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.heads(embedding)[0]

    def volatility(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.heads(embedding)[1]

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.q_values(self.embed(obs))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class SplitForward:
    """:class:`DeepScalperNet`'s forward split in two, for acting over a whole split without a network call per bar.

    Everything that depends on the bars only (the market encoding) is computed for every bar of the split in one
    batched pass: the macro encoder and its share of the heads' input layer, and the bars' share of the micro
    encoder's input projection. What depends on the agent's own private state (position, unrealised P&L, cash,
    time left) runs per decision in float64 numpy (:meth:`q`): the private share of the input projection, the
    recurrence over the ``micro_window`` most recent bars, and the heads.

    The sums are grouped differently from the float32 forward, so Q values agree to about 1e-6, not bit for
    bit; callers that need the forward's exact greedy action treat a near tie as undecided (see
    ``DeepScalper.split_policy``).

    :param net: the network (its weights are copied; later training does not change this object).
    :param bars: (n_bars, n_features) features of every bar of the split (as the env's observation holds them).
    :param chunk: rows per batched pass (bounds the memory of a wide macro window).
    """

    def __init__(self, net: DeepScalperNet, bars: np.ndarray, chunk: int = 16384) -> None:
        w = {k: v.detach().cpu().double().numpy() for k, v in net.state_dict().items()}
        self.window, self.n_features, self.n_private = net.window, net.n_features, net.n_private
        self.micro_window, self.hidden, self.rnn = net.micro_window, net.hidden_size, net.rnn_kind
        self.branch_sizes = list(net.branch_sizes)
        self.private_mask = net.private_mask.detach().cpu().double().numpy()
        f, h, mw = self.n_features, self.hidden, net.macro_window
        bars64 = np.ascontiguousarray(bars, dtype=np.float64)
        n = len(bars64)
        in_key = "micro.proj" if self.rnn == "mingru" else "micro"
        w_in = w[f"{in_key}.weight"] if self.rnn == "mingru" else w["micro.weight_ih_l0"]
        b_in = w[f"{in_key}.bias"] if self.rnn == "mingru" else w["micro.bias_ih_l0"]
        self._micro_bars = bars64 @ w_in[:, :f].T + b_in  # (n_bars, gates): the bars' share of the projection
        self._micro_private = w_in[:, f:]  # (gates, n_private)
        if self.rnn != "mingru":
            self._w_hh, self._b_hh = w["micro.weight_hh_l0"], w["micro.bias_hh_l0"]
        # macro encoder over the last macro_window bars of each decision bar, then its share of heads_in
        w_heads, b_heads = w["heads_in.weight"], w["heads_in.bias"]
        self._heads_macro = np.full((n, w_heads.shape[0]), np.nan)
        windows = np.lib.stride_tricks.sliding_window_view(bars64, (mw, f))[:, 0]  # a view: (n - mw + 1, mw, f)
        for start in range(0, len(windows), chunk):
            x = windows[start:start + chunk].reshape(-1, mw * f)
            x = np.maximum(x @ w["macro.0.weight"].T + w["macro.0.bias"], 0.0)
            x = np.maximum(x @ w["macro.2.weight"].T + w["macro.2.bias"], 0.0)
            self._heads_macro[mw - 1 + start: mw - 1 + start + len(x)] = x @ w_heads[:, :h].T + b_heads
        self._heads_macro = self._heads_macro[:, :-1]  # the volatility output is not needed to act
        self._heads_micro = w_heads[:-1, h:]
        # The heads' output layer and the dueling aggregation are linear: fold them into one (K*h, sum n_d) map.
        out_w, out_b = w["heads_out_weight"], w["heads_out_bias"][:, 0, :]  # (K, h, n_max), (K, n_max)
        k_heads, cols = out_w.shape[0], sum(self.branch_sizes)
        self._q_map = np.zeros((k_heads * h, cols))
        self._q_bias = np.zeros(cols)
        col = 0
        for d, size in enumerate(self.branch_sizes):
            adv_w, adv_b = out_w[1 + d, :, :size], out_b[1 + d, :size]
            self._q_map[:h, col:col + size] = out_w[0, :, :1]  # V(s), shared by every branch
            self._q_map[(1 + d) * h:(2 + d) * h, col:col + size] = adv_w - adv_w.mean(1, keepdims=True)
            self._q_bias[col:col + size] = out_b[0, 0] + adv_b - adv_b.mean()
            col += size
        self.bounds = np.cumsum([0, *self.branch_sizes])

    def _micro(self, t: int, private: np.ndarray) -> np.ndarray:
        x = self._micro_bars[t - self.micro_window + 1: t + 1] + self._micro_private @ private
        h = self.hidden
        if self.rnn == "mingru":
            # MinGRU's weights w_t = z_t prod_{s>t} (1 - z_s), as products (float64 needs no log space here)
            keep = 1.0 / (1.0 + np.exp(x[:, :h]))  # 1 - z = sigmoid(-g)
            after = np.ones_like(keep)
            after[:-1] = np.cumprod(keep[:0:-1], axis=0)[::-1]  # prod_{s>t} (1 - z_s)
            return np.einsum("th,th->h", (1.0 - keep) * after, x[:, h:])
        state = np.zeros(h)
        cell = np.zeros(h)
        for row in x:
            g = row + (self._w_hh @ state + self._b_hh)
            if self.rnn == "gru":  # torch's gate order: reset, update, new
                hh = self._w_hh[2 * h:] @ state + self._b_hh[2 * h:]
                r, z = _sigmoid(g[:h]), _sigmoid(g[h:2 * h])
                new = np.tanh(row[2 * h:] + r * hh)
                state = (1.0 - z) * new + z * state
            else:  # lstm: input, forget, cell, output
                i, fg, o = _sigmoid(g[:h]), _sigmoid(g[h:2 * h]), _sigmoid(g[3 * h:])
                cell = fg * cell + i * np.tanh(g[2 * h:3 * h])
                state = o * np.tanh(cell)
        return state

    def q(self, t: int, private: np.ndarray) -> np.ndarray:
        """Q values (float64) of every branch, concatenated (branch d is ``[bounds[d]:bounds[d+1]]``), of the
        observation at bar ``t`` with private state ``private`` (the observation's last ``n_private`` cells)."""
        micro = self._micro(t, np.asarray(private, dtype=np.float64) * self.private_mask)
        hidden = self._heads_macro[t] + self._heads_micro @ micro
        return np.maximum(hidden, 0.0, out=hidden) @ self._q_map + self._q_bias
