"""DeepScalper's networks: macro and micro encoders, a Branching Dueling Q-Network and the volatility head.

Input: TradingEnv's flat observation, ``window * n_features`` technical features (oldest bar first) followed by
``n_private`` private values (position, unrealised P&L, cash, time left).

- macro encoder: an MLP over the whole window of technical features;
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


def _relu_grad(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Gradient through a ReLU given its output: ``grad * (output > 0)`` in one op."""
    return torch.ops.aten.threshold_backward(grad, output, 0.0)


class MinGRU(nn.Module):
    """A GRU whose update gate and candidate depend on the current input only (Feng et al. 2024).

    h_t = (1 - z_t) * h_{t-1} + z_t * c_t with z_t = sigmoid(W_z x_t), c_t = W_c x_t and h_0 = 0, so
    h_T = sum_t z_t c_t prod_{s>t} (1 - z_s): computed for all steps at once in log space (a triangular
    matmul sums the later log(1 - z_s)), without a Python loop over time. Returns the last hidden state only.
    """

    def __init__(self, input_size: int, hidden_size: int, steps: int) -> None:
        super().__init__()
        self.proj = nn.Linear(input_size, 2 * hidden_size)
        # later[t, s] = 1 when s > t: (later @ x)[t] = sum_{s > t} x[s]
        self.register_buffer("later", torch.triu(torch.ones(steps, steps), diagonal=1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_logits, candidate = self.proj(x).chunk(2, dim=-1)
        log_keep = -F.softplus(gate_logits)  # log(1 - z_t); log z_t = gate_logits + log(1 - z_t)
        log_weight = gate_logits + log_keep + torch.matmul(self.later, log_keep)
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
    """

    def __init__(self, window: int, n_features: int, n_private: int, branch_sizes: list[int], hidden_size: int,
                 rnn: str = "gru", micro_window: int = 0) -> None:
        super().__init__()
        self.window, self.n_features, self.n_private = window, n_features, n_private
        self.micro_window = window if micro_window <= 0 else min(micro_window, window)
        self.branch_sizes = list(branch_sizes)
        self.rnn_kind = rnn
        h = self.hidden_size = hidden_size
        self.macro = nn.Sequential(nn.Linear(window * n_features, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())
        micro_in = n_features + n_private
        if rnn == "gru":
            self.micro: nn.Module = nn.GRU(micro_in, h, batch_first=True)
        elif rnn == "lstm":
            self.micro = nn.LSTM(micro_in, h, batch_first=True)
        elif rnn == "mingru":
            self.micro = MinGRU(micro_in, h, self.micro_window)
            # upper[t, s] = 1 when s >= t (the fused path's suffix sums)
            self.register_buffer("upper", torch.triu(torch.ones(self.micro_window, self.micro_window)),
                                 persistent=False)
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
        self.flat_grad: torch.Tensor | None = None  # the fused path's gradients, one buffer (fused_grads)
        self._grad_views: list[torch.Tensor] = []

    def embed(self, obs: torch.Tensor) -> torch.Tensor:
        """Market embedding [macro, micro] of a batch of flat observations (B, obs_dim)."""
        n_market = self.window * self.n_features
        features = obs[:, :n_market]
        private = obs[:, n_market:n_market + self.n_private]
        macro = self.macro(features)
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
        value, adv = out[..., :1, :, :1], out[..., 1:, :, :]  # also for a leading (online, target) dim
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

    # --- fused mingru path: the same function with hand-written gradients (no autograd graph) -----------

    @property
    def fused(self) -> bool:
        """True when ``forward_fused``/``backward_fused`` apply (the mingru encoder)."""
        return self.rnn_kind == "mingru"

    @torch.no_grad()
    def forward_fused(self, obs: torch.Tensor, keep: bool = False) -> tuple[torch.Tensor, torch.Tensor, dict | None]:
        """(Q, vol, cache) exactly as ``heads(embed(obs))`` for the mingru encoder, computed without recording
        an autograd graph; ``keep`` returns the intermediates ``backward_fused`` needs.

        Cheaper but equal formulations: the micro input projection splits into a per-bar part (one matmul
        over the micro window's bars) and the private-state part (once per observation, broadcast over the
        steps); the log weights are ``log w_t = g_t - sum_{s >= t} softplus(g_s)`` (one triangular matmul).
        """
        h, nf = self.hidden_size, self.n_features
        n_market = self.window * nf
        features = obs[:, :n_market]
        private = obs[:, n_market:n_market + self.n_private]
        m0, _, m2, _ = self.macro
        a1 = F.linear(features, m0.weight, m0.bias)
        r1 = torch.relu(a1)
        macro = torch.relu(F.linear(r1, m2.weight, m2.bias))
        bars = features[:, n_market - self.micro_window * nf:].reshape(-1, self.micro_window, nf)
        w_proj = self.micro.proj.weight
        proj = torch.matmul(bars, w_proj[:, :nf].t()) + F.linear(private, w_proj[:, nf:], self.micro.proj.bias)[:, None]
        gates, cand = proj[..., :h], proj[..., h:]
        weight = torch.exp(gates - torch.matmul(self.upper, F.softplus(gates)))  # z_t * prod_{s>t} (1 - z_s)
        micro = (weight * cand).sum(1)
        emb = torch.cat([macro, micro], dim=1)
        z = F.linear(emb, self.heads_in.weight, self.heads_in.bias)
        hidden = torch.relu(z[:, :-1]).view(z.shape[0], -1, h).transpose(0, 1)
        out = torch.baddbmm(self.heads_out_bias, hidden, self.heads_out_weight)
        q = self._aggregate(out)
        cache = None
        if keep:
            cache = {"features": features, "private": private, "r1": r1, "macro": macro, "bars": bars,
                     "gates": gates, "cand": cand, "weight": weight, "emb": emb, "hidden": hidden}
        return q, z[:, -1], cache

    @torch.no_grad()
    def backward_fused(self, cache: dict, actions: torch.Tensor, d_q_taken: torch.Tensor,
                       d_vol: torch.Tensor | None) -> None:
        """Set ``.grad`` of every parameter to the gradient of a loss whose derivatives are ``d_q_taken``
        (branches, B) at Q[d, b, actions[d, b]] and ``d_vol`` (B,) at the volatility output (None = 0).

        Hand-derived chain rule of ``forward_fused`` (or of the online half of ``forward_pair``: ``cache`` from
        either); tests compare it with autograd on the module path. Gradients are written into
        ``fused_grads()`` (views of ``self.flat_grad``), which are the parameters' ``.grad``.
        """
        c, h = cache, self.hidden_size
        n_batch, n_max = d_q_taken.shape[1], max(self.branch_sizes)
        grads = self.fused_grads(d_q_taken.dtype)  # each gradient is written in place (out=) into these
        # Q_d = V + A_d - mean_a A_d: dV = sum_d dQ_d, dA_d = onehot(a) dq - dq / n_d (valid entries only)
        d_out = torch.zeros(1 + len(self.branch_sizes), n_batch, n_max, dtype=d_q_taken.dtype)
        d_adv = d_out[1:]
        d_adv.scatter_(2, actions, d_q_taken[..., None])
        if self.padded:
            d_adv -= (d_q_taken[..., None] / self.counts) * self.valid
        else:
            d_adv -= d_q_taken[..., None] / n_max
        d_out[0, :, 0] = d_q_taken.sum(0)
        hidden = c["hidden"]
        torch.bmm(hidden.transpose(1, 2), d_out, out=grads[8])
        torch.sum(d_out, 1, keepdim=True, out=grads[9])
        d_hidden = torch.bmm(d_out, self.heads_out_weight.transpose(1, 2)).transpose(0, 1)  # (B, heads, h)
        d_z = torch.empty(n_batch, self.heads_in.out_features, dtype=d_q_taken.dtype)
        d_z[:, :-1].view(n_batch, -1, h).copy_(_relu_grad(d_hidden, hidden.transpose(0, 1)))
        if d_vol is None:
            d_z[:, -1] = 0.0
        else:
            d_z[:, -1] = d_vol
        torch.mm(d_z.t(), c["emb"], out=grads[6])
        torch.sum(d_z, 0, out=grads[7])
        d_emb = d_z @ self.heads_in.weight
        # macro MLP
        r1 = c["r1"]
        d_a2 = _relu_grad(d_emb[:, :h], c["macro"])
        torch.mm(d_a2.t(), r1, out=grads[2])
        torch.sum(d_a2, 0, out=grads[3])
        d_a1 = _relu_grad(d_a2 @ self.macro[2].weight, r1)
        torch.mm(d_a1.t(), c["features"], out=grads[0])
        torch.sum(d_a1, 0, out=grads[1])
        # micro: micro = sum_t w_t c_t, log w_t = g_t - sum_{s>=t} softplus(g_s)
        # => d c_t = dm w_t; with e_t = dm w_t c_t: d g_u = e_u - sigmoid(g_u) sum_{t<=u} e_t
        weight = c["weight"]
        d_proj = torch.empty(weight.shape[0], weight.shape[1], 2 * h, dtype=weight.dtype)
        d_cand = torch.mul(d_emb[:, None, h:], weight, out=d_proj[..., h:])
        e = d_cand * c["cand"]
        z_gate = c["z_gate"] if "z_gate" in c else torch.sigmoid(c["gates"])
        torch.sub(e, z_gate * e.cumsum(1), out=d_proj[..., :h])
        bars = c["bars"]
        nf = bars.shape[2]
        torch.mm(d_proj.reshape(-1, 2 * h).t(), bars.reshape(-1, nf), out=grads[4][:, :nf])
        d_proj_sum = d_proj.sum(1)
        torch.mm(d_proj_sum.t(), c["private"], out=grads[4][:, nf:])
        torch.sum(d_proj_sum, 0, out=grads[5])

    def fused_grads(self, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
        """The ``.grad`` tensors ``backward_fused`` writes: views, shaped like the parameters, of ONE flat
        buffer (``self.flat_grad``), attached to the parameters (again) when needed."""
        params = self._fused_params
        if self.flat_grad is None or self.flat_grad.dtype != dtype:
            self.flat_grad = torch.zeros(sum(p.numel() for p in params), dtype=dtype, device=params[0].device)
            self._grad_views, offset = [], 0
            for p in params:
                self._grad_views.append(self.flat_grad[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
        if params[0].grad is not self._grad_views[0] or params[-1].grad is not self._grad_views[-1]:
            for p, g in zip(params, self._grad_views):
                p.grad = g
        return self._grad_views

    @torch.no_grad()
    def forward_pair(self, stacks: list[torch.Tensor], obs_pair: torch.Tensor,
                     keep: bool = False) -> tuple[torch.Tensor, torch.Tensor, dict | None]:
        """``forward_fused`` of two networks of this shape at once: network k (0 = online, 1 = target) has the
        parameters ``stack[k]`` of every tensor in ``stacks`` (``pair_parameters``) and reads ``obs_pair[k]``
        (2, B, obs_dim). Every layer is one batched matmul over the pair, so both passes share their ops.

        :returns: (Q (2, branches, B, n), vol (2, B), cache of network 0 for ``backward_fused`` when ``keep``).
        """
        h, nf, mw = self.hidden_size, self.n_features, self.micro_window
        n_market = self.window * nf
        w0, b0, w2, b2, wp, bp, wi, bi, wo, bo = stacks
        n_batch = obs_pair.shape[1]
        features = obs_pair[..., :n_market]
        private = obs_pair[..., n_market:n_market + self.n_private]
        r1 = torch.relu(torch.baddbmm(b0[:, None], features, w0.transpose(1, 2)))
        macro = torch.relu(torch.baddbmm(b2[:, None], r1, w2.transpose(1, 2)))
        bars = features[..., n_market - mw * nf:].reshape(2, n_batch * mw, nf)
        proj = torch.bmm(bars, wp[:, :, :nf].transpose(1, 2)).view(2, n_batch, mw, 2 * h)
        proj += torch.baddbmm(bp[:, None], private, wp[:, :, nf:].transpose(1, 2))[:, :, None]
        gates, cand = proj[..., :h], proj[..., h:]
        # w_t = z_t * prod_{s>t} (1 - z_s): the suffix products in a short loop over the steps (cheaper than
        # the log-space form's softplus and exp at this size; same values to float rounding)
        z_gate = torch.sigmoid(gates)
        stay = 1.0 - z_gate
        later = torch.empty_like(stay)  # later[t] = prod_{s>t} (1 - z_s)
        later[:, :, -1] = 1.0
        for t in range(mw - 2, -1, -1):
            torch.mul(later[:, :, t + 1], stay[:, :, t + 1], out=later[:, :, t])
        weight = later.mul_(z_gate)
        micro = (weight * cand).sum(2)
        emb = torch.cat([macro, micro], dim=2)
        z = torch.baddbmm(bi[:, None], emb, wi.transpose(1, 2))
        hidden = torch.relu(z[..., :-1]).view(2, n_batch, -1, h).transpose(1, 2)  # (2, heads, B, h)
        out = torch.matmul(hidden, wo) + bo
        q = self._aggregate(out)
        cache = None
        if keep:
            cache = {"features": features[0], "private": private[0], "r1": r1[0], "macro": macro[0],
                     "bars": bars[0].view(n_batch, mw, nf), "z_gate": z_gate[0], "cand": cand[0],
                     "weight": weight[0], "emb": emb[0], "hidden": hidden[0]}
        return q, z[..., -1], cache

    @property
    def _fused_params(self) -> list[nn.Parameter]:
        m0, _, m2, _ = self.macro
        return [m0.weight, m0.bias, m2.weight, m2.bias, self.micro.proj.weight, self.micro.proj.bias,
                self.heads_in.weight, self.heads_in.bias, self.heads_out_weight, self.heads_out_bias]


def pair_parameters(online: DeepScalperNet, target: DeepScalperNet) -> list[torch.Tensor]:
    """Store the fused parameters of ``online`` and ``target`` (same shapes) in stacked tensors: returns one
    (2, *shape) tensor per parameter whose [0] IS the online parameter's storage and [1] the target's (the
    parameters become views), so ``forward_pair`` reads both networks' current weights without copies. Their
    values are unchanged; in-place updates (the optimizer, target syncs, ``load_state_dict``) keep the link.
    """
    stacks = []
    for p_on, p_tg in zip(online._fused_params, target._fused_params):
        stack = torch.stack([p_on.detach(), p_tg.detach()])
        p_on.data, p_tg.data = stack[0], stack[1]
        stacks.append(stack)
    return stacks
