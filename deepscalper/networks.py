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

    # --- the training fast path: online and target networks in one batched pass, hand-derived gradients --------

    def greedy_numpy(self, w: dict[str, np.ndarray], obs: np.ndarray) -> np.ndarray:
        """The greedy sub-action of every branch for ONE observation (obs_dim,), in numpy (mingru only): what
        ``forward(obs).argmax(2)`` gives, at a fraction of the cost of torch's per-operation overhead (the
        training loop acts once per env step). ``w``: :meth:`TwinParameters.online_arrays` (views of the live
        parameters, in their dtype).

        Within a branch V(s) and the mean advantage are the same for every sub-action, so the argmax of Q_d is
        the argmax of A_d over the branch's real sub-actions: only the advantage heads are evaluated (equal to
        the forward up to float rounding).
        """
        h, nf, mw = self.hidden_size, self.n_features, self.micro_window
        n_market = self.window * nf
        x = obs[(self.window - self.macro_window) * nf:n_market]
        r1 = w["macro.0.weight"] @ x + w["macro.0.bias"]
        macro = w["macro.2.weight"] @ np.maximum(r1, 0, out=r1) + w["macro.2.bias"]
        w_proj = w["micro.proj.weight"]
        private = obs[n_market:n_market + self.n_private] * self.private_mask.numpy()
        proj = obs[n_market - mw * nf:n_market].reshape(mw, nf) @ w_proj[:, :nf].T
        proj += w_proj[:, nf:] @ private + w["micro.proj.bias"]
        gates, cand = proj[:, :h], proj[:, h:]
        weight = np.exp(gates - self.micro.upper.numpy() @ np.logaddexp(0, gates))
        emb = np.concatenate([np.maximum(macro, 0, out=macro), (weight * cand).sum(0)])
        n_branches = len(self.branch_sizes)
        rows = slice(h, (1 + n_branches) * h)  # the advantage heads' hidden units (head 0 is V)
        hidden = w["heads_in.weight"][rows] @ emb + w["heads_in.bias"][rows]
        hidden = np.maximum(hidden, 0, out=hidden).reshape(n_branches, 1, h)
        adv = (hidden @ w["heads_out_weight"][1:])[:, 0] + w["heads_out_bias"][1:, 0]  # (branches, n_max)
        if self.padded:
            adv = np.where(self.valid.numpy()[:, 0] > 0, adv, -np.inf)
        return adv.argmax(axis=1)

    def forward_stacked(self, w: dict[str, torch.Tensor], obs: torch.Tensor, keep: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor] | None]:
        """The heads' outputs of k networks of this layout at once, without an autograd graph (mingru only).

        ``w`` maps every parameter name to a (k, *shape) tensor (network j's parameters are ``w[name][j]``), with
        the derived views of :func:`stacked_views` (e.g. :class:`TwinParameters` ``.stacked``: j = 0 the online,
        1 the target network) and ``obs`` is (k, B, obs_dim), network j reading ``obs[j]``. Every layer is one
        batched matmul over the k networks, so the online and the target pass of an update share their
        operations. The arithmetic is the module path's (same formulas, sums grouped as batched matmuls group
        them: equal to float rounding), except that the dueling aggregation is left to the caller:
        ``out[j, 0, :, 0]`` is V(s) and ``out[j, 1 + d]`` the raw advantages A_d (Q_d = V + A_d - mean of A_d over
        the branch's real sub-actions; the caller's loss needs only a few of these numbers per transition).
        No autograd graph is recorded: ``w`` and ``obs`` must not require gradients.

        :returns: out (k, 1 + branches, B, n_max), vol (k, B), and with ``keep`` what :meth:`backward_online`
            needs (network 0's intermediates).
        """
        h, nf, mw = self.hidden_size, self.n_features, self.micro_window
        n_market = self.window * nf
        k, n_batch = obs.shape[0], obs.shape[1]
        private = obs[..., n_market:n_market + self.n_private] * self.private_mask
        macro_in = obs[..., (self.window - self.macro_window) * nf:n_market]
        r1 = torch.relu_(torch.baddbmm(w["macro.0.bias:row"], macro_in, w["macro.0.weight:T"]))
        macro = torch.relu_(torch.baddbmm(w["macro.2.bias:row"], r1, w["macro.2.weight:T"]))
        # The micro encoder works in the layout (k, 2h, B, steps): gates and candidates are contiguous blocks and
        # the sums over steps are one matmul with the (steps, steps) triangle. Its input projection is one
        # matmul of [weight | bias] with the inputs [bar; private; 1] laid out as (k, features + private + 1,
        # B * steps).
        n_in = nf + self.n_private
        inputs = self._micro_inputs(k, n_batch, obs.dtype, obs.device)
        inputs[:, :nf] = obs[..., n_market - mw * nf:n_market].reshape(k, n_batch, mw, nf).permute(0, 3, 1, 2)
        inputs[:, nf:n_in] = private.transpose(1, 2)[..., None]
        inputs = inputs.view(k, n_in + 1, n_batch * mw)
        w_aug = torch.cat([w["micro.proj.weight"], w["micro.proj.bias:col"]], dim=2)
        proj = torch.bmm(w_aug, inputs).view(k, 2 * h, n_batch, mw)
        gates, cand = proj[:, :h], proj[:, h:]  # (k, h, B, steps) each
        # MinGRU: log w_t = g_t - sum_{s >= t} softplus(g_s), as MinGRU.forward; softplus as torch computes it
        # (g itself above 20) in four cheap ops, max(log(1 + exp(min(g, 20))), g): half the time of F.softplus
        # here, equal to float rounding (1 + exp(g) rounds to 1 below about g = -16: an error under 1e-7)
        softplus = torch.maximum(torch.exp(gates.clamp(max=20.0)).add_(1.0).log_(), gates)
        suffix = torch.matmul(softplus.view(-1, mw), self.micro.upper.t()).view(gates.shape)
        weight = torch.exp_(gates - suffix)
        micro = (weight * cand).sum(3)  # (k, h, B)
        emb = torch.cat([macro, micro.transpose(1, 2)], dim=2)
        z = torch.baddbmm(w["heads_in.bias:row"], emb, w["heads_in.weight:T"])
        hidden = torch.relu(z[..., :-1]).view(k, n_batch, -1, h).transpose(1, 2)  # (k, heads, B, h)
        out = torch.matmul(hidden, w["heads_out_weight"]).add_(w["heads_out_bias"])
        cache = None
        if keep:
            cache = {"macro_in": macro_in[0], "r1": r1[0], "macro": macro[0],
                     "inputs": inputs[0], "gates": gates[0], "cand": cand[0], "weight": weight[0], "emb": emb[0],
                     "hidden": hidden[0]}
        return out, z[..., -1], cache

    def dueling_arrays(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(valid, pad, counts) in numpy ``dtype``: valid (branches, 1, n_max) 1 on a branch's real sub-actions
        and 0 on padding, pad 0 / -inf likewise (added before a max), counts (branches, 1) the branch sizes."""
        cached = getattr(self, "_dueling_arrays", None)
        if cached is None or cached[0].dtype != dtype:
            valid = self.valid.cpu().numpy().astype(dtype)
            pad = np.where(valid > 0, 0.0, -np.inf).astype(dtype)
            cached = self._dueling_arrays = (valid, pad, self.counts.cpu().numpy()[:, :, 0].astype(dtype))
        return cached

    def _micro_inputs(self, k: int, n_batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A (k, features + private + 1, B, steps) buffer whose last row is ones, reused while the shape holds
        (``forward_stacked`` fills the other rows on every call; its cache refers to it until the next call)."""
        shape = (k, self.n_features + self.n_private + 1, n_batch, self.micro_window)
        buffer = getattr(self, "_inputs_buffer", None)
        if buffer is None or buffer.shape != shape or buffer.dtype != dtype or buffer.device != device:
            with torch.inference_mode(False):  # an ordinary tensor, writable in and out of inference mode
                buffer = torch.empty(shape, dtype=dtype, device=device)
                buffer[:, -1] = 1.0
            self._inputs_buffer = buffer
        return buffer

    def backward_online(self, w: dict[str, torch.Tensor], cache: dict[str, torch.Tensor], d_out: torch.Tensor,
                        d_vol: torch.Tensor | None, grads: dict[str, torch.Tensor]) -> None:
        """Write into ``grads`` (name -> tensor shaped like the parameter) the gradient of a loss whose
        derivatives are ``d_out`` (1 + branches, B, n_max) at network 0's heads' outputs of
        :meth:`forward_stacked` and ``d_vol`` (B,) at its volatility output (None: 0); ``cache`` from
        ``keep=True``.

        The chain rule of ``forward_stacked`` written out (tests compare it with autograd on the module path):
        out_k = hidden_k W_k + b_k; MinGRU: micro = sum_t w_t c_t, log w_t = g_t - sum_{s>=t} softplus(g_s), so
        d c_t = dm w_t and, with e_t = dm w_t c_t, d g_u = e_u - sigmoid(g_u) sum_{t<=u} e_t.
        """
        c, h = cache, self.hidden_size
        n_batch = d_out.shape[1]
        hidden = c["hidden"]  # (heads, B, h)
        torch.bmm(hidden.transpose(1, 2), d_out, out=grads["heads_out_weight"])
        torch.sum(d_out, 1, keepdim=True, out=grads["heads_out_bias"])
        d_hidden = torch.bmm(d_out, w["heads_out_weight:0T"]).transpose(0, 1)  # (B, heads, h)
        d_z = torch.empty(n_batch, self.heads_in.out_features, dtype=d_out.dtype, device=d_out.device)
        torch.mul(d_hidden, hidden.transpose(0, 1) > 0, out=d_z[:, :-1].view(n_batch, -1, h))
        if d_vol is None:
            d_z[:, -1] = 0.0
        else:
            d_z[:, -1] = d_vol
        torch.mm(d_z.t(), c["emb"], out=grads["heads_in.weight"])
        torch.sum(d_z, 0, out=grads["heads_in.bias"])
        d_emb = d_z @ w["heads_in.weight:0"]
        # macro MLP
        r1 = c["r1"]
        d_a2 = d_emb[:, :h] * (c["macro"] > 0)
        torch.mm(d_a2.t(), r1, out=grads["macro.2.weight"])
        torch.sum(d_a2, 0, out=grads["macro.2.bias"])
        d_a1 = (d_a2 @ w["macro.2.weight:0"]).mul_(r1 > 0)
        torch.mm(d_a1.t(), c["macro_in"], out=grads["macro.0.weight"])
        torch.sum(d_a1, 0, out=grads["macro.0.bias"])
        # micro (MinGRU), in the forward's layout (2h, B, steps)
        weight = c["weight"]
        mw = weight.shape[2]
        d_proj = torch.empty(2 * h, n_batch, mw, dtype=weight.dtype, device=weight.device)
        d_cand = torch.mul(d_emb[:, h:].t()[..., None], weight, out=d_proj[h:])
        e = d_cand * c["cand"]
        # sum_{t<=u} e_t: a matmul with the triangle
        prefix = torch.matmul(e.view(-1, mw), self.micro.upper).view(e.shape)
        torch.sub(e, torch.sigmoid(c["gates"]).mul_(prefix), out=d_proj[:h])
        grad_aug = torch.mm(d_proj.view(2 * h, -1), c["inputs"].t())  # d [weight | bias]
        grads["micro.proj.weight"].copy_(grad_aug[:, :-1])
        grads["micro.proj.bias"].copy_(grad_aug[:, -1])


def stacked_views(w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``w`` (name -> (k, *shape) stacked parameters) plus the views ``forward_stacked`` and ``backward_online``
    read: transposed weights ("name:T"), biases as a row ("name:row", (k, 1, n)) or a column ("name:col", (k, n,
    1)), network 0's transposed head weights. Views of the same memory: made once, current as the values change."""
    views = dict(w)
    for name in ("macro.0.weight", "macro.2.weight", "heads_in.weight"):
        views[f"{name}:T"] = w[name].transpose(1, 2)
    for name in ("macro.0.bias", "macro.2.bias", "heads_in.bias"):
        views[f"{name}:row"] = w[name][:, None]
    if "micro.proj.bias" in w:
        views["micro.proj.bias:col"] = w["micro.proj.bias"][..., None]
    views["heads_out_weight:0T"] = w["heads_out_weight"][0].transpose(1, 2)
    views["heads_in.weight:0"] = w["heads_in.weight"][0]
    views["macro.2.weight:0"] = w["macro.2.weight"][0]
    return views


class TwinParameters:
    """The online and the target network's parameters in ONE (2, total) tensor, and the online gradients in one
    flat buffer, for the training fast path.

    Every parameter of either network becomes a view of its row (row 0 online, row 1 target), so
    ``stacked[name]`` (2, *shape) reads both networks' current weights without a copy, the optimizer and the
    clipping work on one flat tensor (``online``, ``grad``), and a hard target sync is one copy. The values and
    state-dict keys are unchanged; in-place updates (the optimizer, ``load_state_dict``) keep the link, and
    every online parameter's ``.grad`` is its view of ``grad``.
    """

    def __init__(self, online: nn.Module, target: nn.Module) -> None:
        named_on, named_tg = dict(online.named_parameters()), dict(target.named_parameters())
        first = next(iter(named_on.values()))
        total = sum(p.numel() for p in named_on.values())
        self.store = torch.empty(2, total, dtype=first.dtype, device=first.device)
        self.grad = torch.zeros(total, dtype=first.dtype, device=first.device)
        self.online, self.target = self.store[0], self.store[1]
        self.stacked: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        offset = 0
        with torch.no_grad():
            for name, p_on in named_on.items():
                p_tg, n = named_tg[name], p_on.numel()
                rows = self.store[:, offset:offset + n]
                rows[0].copy_(p_on.reshape(-1))
                rows[1].copy_(p_tg.reshape(-1))
                p_on.data, p_tg.data = rows[0].view_as(p_on), rows[1].view_as(p_tg)
                self.stacked[name] = rows.view(2, *p_on.shape)
                self.grads[name] = self.grad[offset:offset + n].view_as(p_on)
                p_on.grad = self.grads[name]
                offset += n
        if isinstance(online, DeepScalperNet) and online.rnn_kind == "mingru":
            self.stacked = stacked_views(self.stacked)
        self.online_params = list(named_on.values())
        self.shapes = {name: tuple(p.shape) for name, p in named_on.items()}

    def online_arrays(self) -> dict[str, np.ndarray]:
        """Numpy views (shared memory, always current) of the online parameters, by name (CPU only)."""
        flat, out, offset = self.online.numpy(), {}, 0
        for name, shape in self.shapes.items():
            n = math.prod(shape)
            out[name] = flat[offset:offset + n].reshape(shape)
            offset += n
        return out

    def attach_grads(self) -> None:
        """(Re)make every online parameter's ``.grad`` its view of ``grad`` (after code that reset them)."""
        for p, g in zip(self.online_params, self.grads.values()):
            if p.grad is not g:
                p.grad = g


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class SplitForward:
    """:class:`DeepScalperNet`'s forward split in two, for acting over a whole split without a network call per bar.

    Everything that depends on the bars only (the market encoding) is computed for every bar of the split in one
    batched pass: the macro encoder and its share of the heads' input layer, and the bars' share of the micro
    encoder's input projection. What depends on the agent's own private state (position, unrealised P&L, cash,
    time left) runs in float64 numpy for a stretch of K bars at once (:meth:`q_block`; :meth:`q` for one bar):
    the private share of the input projection, the recurrence over the ``micro_window`` most recent bars (one
    step for all K rows at a time), and the heads.

    The sums are grouped differently from the float32 forward, so Q values agree to about 1e-6, not bit for
    bit; callers that need the forward's exact greedy action treat a near tie as undecided (see
    ``DeepScalper.split_policy``).

    :param net: the network (its weights are copied; later training does not change this object).
    :param bars: (n_bars, n_features) features of every bar of the split (as the env's observation holds them).
    :param chunk: rows per batched pass (bounds the memory of a wide macro window).
    """

    def __init__(self, net: DeepScalperNet, bars: np.ndarray, chunk: int = 4096) -> None:
        w = {k: v.detach().cpu().double().numpy() for k, v in net.state_dict().items()}
        self.window, self.n_features, self.n_private = net.window, net.n_features, net.n_private
        self.micro_window, self.hidden, self.rnn = net.micro_window, net.hidden_size, net.rnn_kind
        self.branch_sizes = list(net.branch_sizes)
        self.private_mask = net.private_mask.detach().cpu().double().numpy()
        f, h, mw = self.n_features, self.hidden, net.macro_window
        bars64 = np.ascontiguousarray(bars, dtype=np.float64)
        n = len(bars64)

        def t(a: np.ndarray) -> np.ndarray:  # a layer's weight, transposed and contiguous: x @ t(W) = x W^T
            return np.ascontiguousarray(a.T)

        in_key = "micro.proj" if self.rnn == "mingru" else "micro"
        w_in = w[f"{in_key}.weight"] if self.rnn == "mingru" else w["micro.weight_ih_l0"]
        b_in = w[f"{in_key}.bias"] if self.rnn == "mingru" else w["micro.bias_ih_l0"]
        self._micro_private_t = t(w_in[:, f:])  # (n_private, gates)
        if self.rnn == "mingru":  # the bars' share of each gate (as its exp) and of each candidate
            self._gate_exp = bars64 @ t(w_in[:h, :f])
            self._gate_exp += b_in[:h]
            with np.errstate(over="ignore"):
                np.exp(self._gate_exp, out=self._gate_exp)
            self._cand_bars = bars64 @ t(w_in[h:, :f])
            self._cand_bars += b_in[h:]
        else:  # (n_bars, gates): the bars' share of the input projection
            self._micro_bars = bars64 @ t(w_in[:, :f])
            self._micro_bars += b_in
            self._w_hh_t, self._b_hh = t(w["micro.weight_hh_l0"]), w["micro.bias_hh_l0"]
        # macro encoder over the last macro_window bars of each decision bar, then its share of heads_in (the last
        # output of heads_in, the volatility, is not needed to act), in chunks of rows that stay in the caches
        w_heads, b_heads = w["heads_in.weight"][:-1], w["heads_in.bias"][:-1]
        w0, b0, w2, b2 = t(w["macro.0.weight"]), w["macro.0.bias"], t(w["macro.2.weight"]), w["macro.2.bias"]
        w_macro = t(w_heads[:, :h])
        self._heads_macro = np.empty((n, w_heads.shape[0]))
        self._heads_macro[:mw - 1] = np.nan  # bars before the first full macro window: never a decision bar
        windows = np.lib.stride_tricks.sliding_window_view(bars64, (mw, f))[:, 0]  # a view: (n - mw + 1, mw, f)
        for start in range(0, len(windows), chunk):
            x = windows[start:start + chunk].reshape(-1, mw * f) @ w0
            x += b0
            np.maximum(x, 0.0, out=x)
            x = x @ w2
            x += b2
            np.maximum(x, 0.0, out=x)
            out = self._heads_macro[mw - 1 + start: mw - 1 + start + len(x)]
            np.matmul(x, w_macro, out=out)
            out += b_heads
        self._heads_micro_t = t(w_heads[:, h:])
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

    def _micro_block(self, start: int, private: np.ndarray) -> np.ndarray:
        """(K, hidden) micro embeddings of bars ``start .. start + K - 1`` with private states ``private`` (K, n):
        the recurrence over each row's ``micro_window`` bars, one step for all K rows at a time (step s of row j
        reads bar ``start + j - micro_window + 1 + s``: a contiguous block of rows of the bars' share)."""
        k, mw, h = len(private), self.micro_window, self.hidden
        first = start - mw + 1
        own = private @ self._micro_private_t  # (K, gates): the private share, the same at every step of a row
        if self.rnn == "mingru":
            # h_s = (1 - z_s) h_{s-1} + z_s c_s = c_s + (1 - z_s)(h_{s-1} - c_s) with 1 - z_s = 1 / (1 + exp(g_s)),
            # exp(g_s) = exp(bar's share) * exp(private share) (the first factor computed once per bar), and the
            # candidate c_s = bar's share b_s + private share p, so u_s = h_s - p = b_s + (1 - z_s)(u_{s-1} - b_s)
            # from u_0 = -p: three array operations for the gate and three for the state per step
            with np.errstate(over="ignore", invalid="ignore"):
                gate_own = np.exp(own[:, :h])
                cand_own = own[:, h:]
                state = -cand_own
                keep = np.empty((k, h))
                for s in range(first, first + mw):
                    np.multiply(self._gate_exp[s:s + k], gate_own, out=keep)
                    keep += 1.0
                    np.reciprocal(keep, out=keep)
                    bar = self._cand_bars[s:s + k]
                    state -= bar
                    state *= keep
                    state += bar
                state += cand_own
            return state
        state = np.zeros((k, h))
        cell = np.zeros((k, h))
        for s in range(first, first + mw):
            row = self._micro_bars[s:s + k] + own
            recurrent = state @ self._w_hh_t + self._b_hh
            g = row + recurrent
            if self.rnn == "gru":  # torch's gate order: reset, update, new
                r, z = _sigmoid(g[:, :h]), _sigmoid(g[:, h:2 * h])
                new = np.tanh(row[:, 2 * h:] + r * recurrent[:, 2 * h:])  # W_hn h + b_hn inside r * (.)
                state = (1.0 - z) * new + z * state
            else:  # lstm: input, forget, cell, output
                i, fg, o = _sigmoid(g[:, :h]), _sigmoid(g[:, h:2 * h]), _sigmoid(g[:, 3 * h:])
                cell = fg * cell + i * np.tanh(g[:, 2 * h:3 * h])
                state = o * np.tanh(cell)
        return state

    def q_block(self, start: int, private: np.ndarray) -> np.ndarray:
        """(K, sum of branch sizes) float64 Q values of the observations at bars ``start .. start + K - 1`` whose
        private cells (their last ``n_private``) are the K rows of ``private``; branch d is columns
        ``[bounds[d]:bounds[d+1]]``. One pass of array operations for the K bars (a stretch decided ahead)."""
        private = np.asarray(private, dtype=np.float64).reshape(-1, self.n_private) * self.private_mask
        micro = self._micro_block(start, private)
        hidden = self._heads_macro[start:start + len(private)] + micro @ self._heads_micro_t
        return np.maximum(hidden, 0.0, out=hidden) @ self._q_map + self._q_bias

    def q(self, t: int, private: np.ndarray) -> np.ndarray:
        """Q values (float64) of every branch, concatenated (branch d is ``[bounds[d]:bounds[d+1]]``), of the
        observation at bar ``t`` with private state ``private`` (the observation's last ``n_private`` cells)."""
        return self.q_block(t, np.asarray(private).reshape(1, -1))[0]
