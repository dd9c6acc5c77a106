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
        gate_logits, candidate = self.proj(x).chunk(2, dim=-1)
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
        for d, n in enumerate(self.branch_sizes):
            valid[d, :, :n] = 1.0
        self.padded = any(n != n_max for n in self.branch_sizes)
        self.register_buffer("valid", valid, persistent=False)
        self.register_buffer("counts", valid.sum(-1, keepdim=True), persistent=False)
        private_mask = torch.ones(n_private)
        if not time_left_input and n_private:
            private_mask[-1] = 0.0
        self.register_buffer("private_mask", private_mask, persistent=False)

    def embed(self, obs: torch.Tensor) -> torch.Tensor:
        """Market embedding [macro, micro] of a batch of flat observations (B, obs_dim)."""
        n_market = self.window * self.n_features
        features = obs[:, :n_market]
        private = obs[:, n_market:n_market + self.n_private] * self.private_mask
        macro = self.macro(features[:, (self.window - self.macro_window) * self.n_features:])
        bars = features.reshape(-1, self.window, self.n_features)[:, -self.micro_window:]
        seq = torch.cat([bars, private.unsqueeze(1).expand(-1, self.micro_window, -1)], dim=2)
        if self.rnn_kind == "mingru":
            micro = self.micro(seq)
        else:
            _, state = self.micro(seq)
            micro = (state[0] if isinstance(state, tuple) else state)[-1]
        return torch.cat([macro, micro], dim=1)

    def heads(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, vol): Q of shape (branches, B, max branch size) = V + A_d - mean(A_d), padded entries at
        -1e9; vol of shape (B,), the auxiliary (scaled) future-volatility prediction."""
        z = self.heads_in(embedding)
        vol = z[:, -1]
        hidden = F.relu(z[:, :-1]).view(z.shape[0], -1, self.hidden_size).transpose(0, 1)
        out = torch.baddbmm(self.heads_out_bias, hidden, self.heads_out_weight)  # (1 + D, B, n_max)
        return self._aggregate(out), vol

    def _aggregate(self, out: torch.Tensor) -> torch.Tensor:
        """Dueling aggregation of the head outputs (1 + D, B, n_max): V is out[0, :, 0], A_d is out[1 + d]."""
        value, adv = out[:1, :, :1], out[1:]
        if self.padded:
            adv = adv * self.valid
            q = value + adv - adv.sum(-1, keepdim=True) / self.counts
            return q + (self.valid - 1.0) * 1e9
        return value + adv - adv.mean(-1, keepdim=True)

    def q_values(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.heads(embedding)[0]

    def volatility(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.heads(embedding)[1]

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.q_values(self.embed(obs))
