"""BacktraderEnv: TradingEnv's observations and actions over backtrader's Cerebro and broker.

backtrader is a push loop (Cerebro calls ``Strategy.next`` bar after bar), a gymnasium env is pulled
(``step``). Each episode runs Cerebro in a worker thread; its strategy and the env hand over one bar at a
time through two queues: at bar t the strategy reports the broker's state (cash, position, value and the
fill of the previous order) and waits; ``step`` sends the order the action asks for; the strategy submits
it to backtrader's broker (Market, or Limit cancelled if the next bar does not fill it) and returns from
``next``; backtrader executes it in bar t+1 and the loop repeats. Fills, slippage, commission, cash and the
account value are the broker's own.
"""
from __future__ import annotations

import logging
import queue
import threading

import backtrader as bt
import numpy as np

from rl_env.config import EnvConfig
from rl_env.data import MarketData
from rl_env.trading_env import TradingEnv

logger = logging.getLogger(__name__)
_TIMEOUT = 60.0  # seconds to wait for the worker before declaring it dead


class _Stop(Exception):
    """Ends a worker's Cerebro run early (reset mid-episode, close)."""


class _CommInfo(bt.CommInfoBase):
    """Stock-like, a percentage of notional with a minimum per executed part, margin leverage for longs."""

    params = (("stocklike", True), ("commtype", bt.CommInfoBase.COMM_PERC), ("percabs", True),
              ("commission", 0.0), ("leverage", 1.0), ("min_commission", 0.0))

    def _getcommission(self, size: float, price: float, pseudoexec: bool) -> float:
        fee = abs(size) * self.p.commission * price
        return fee if fee >= self.p.min_commission else self.p.min_commission


class _ArrayFeed(bt.feed.DataBase):
    """A backtrader data feed over numpy arrays (bars ``start .. stop-1`` of a MarketData)."""

    params = (("arrays", None),)

    def start(self) -> None:
        super().start()
        self._i = 0

    def _load(self) -> bool:
        dt, o, h, lo, c, v = self.p.arrays
        i = self._i
        if i >= len(dt):
            return False
        self.lines.datetime[0] = dt[i]
        self.lines.open[0] = o[i]
        self.lines.high[0] = h[i]
        self.lines.low[0] = lo[i]
        self.lines.close[0] = c[i]
        self.lines.volume[0] = v[i]
        self.lines.openinterest[0] = 0.0
        self._i = i + 1
        return True


class _Bridge(bt.Strategy):
    """Reports each bar's broker state to the env and submits the order it sends back."""

    params = (("to_env", None), ("from_env", None), ("last_bar", 0))

    def __init__(self) -> None:
        self._order: bt.Order | None = None

    def next(self) -> None:
        fill = (0.0, 0.0, 0.0)
        order = self._order
        if order is not None:
            ex = order.executed
            if ex.size:
                fill = (ex.size, ex.exbits[-1].price if ex.exbits else ex.price, ex.comm)
            if order.alive():
                self.cancel(order)  # a limit order lives for one bar
            self._order = None
        pos = self.position
        broker = self.broker
        self.p.to_env.put(("bar", broker.getcash(), pos.size, pos.price, broker.getvalue(), fill))
        if len(self) - 1 >= self.p.last_bar:
            return
        command = self.p.from_env.get()
        if command[0] == "stop":
            raise _Stop
        _, qty, limit = command
        if qty:
            kind = bt.Order.Market if limit != limit else bt.Order.Limit
            price = None if kind == bt.Order.Market else limit
            if qty > 0:
                self._order = self.buy(size=qty, exectype=kind, price=price)
            else:
                self._order = self.sell(size=-qty, exectype=kind, price=price)


class BacktraderEnv(TradingEnv):
    """The same environment as :class:`~rl_env.trading_env.TradingEnv` (observation, actions, rewards,
    episode rules), but orders go to backtrader's ``BackBroker``.

    Broker settings: cash ``initial_cash``; cheat-on-close and cheat-on-open off (an order decided at bar
    t executes in bar t+1); ``set_slippage_perc(slip, slip_open=True, slip_limit=True, slip_match=True,
    slip_out=False)`` with ``slip = (spread_bps/2 + slippage_bps)/1e4``; a stock-like commission scheme
    with ``commission_rate``, a per-part minimum ``commission_min`` and ``leverage = margin_leverage``;
    ``shortcash=True``; ``checksubmit=False`` (the cash check happens when the order executes).
    Market orders are ``Order.Market``; limit orders ``Order.Limit`` at the limit price, cancelled at the
    next decision if bar t+1 did not fill them.

    ``close()`` stops the worker thread and joins it; ``reset()`` during an episode does the same before
    starting the next one. Throughput is a few thousand steps per second (the handover between threads).
    """

    def __init__(self, data: MarketData, config: EnvConfig | None = None) -> None:
        super().__init__(data, config)
        self._dates = np.array([bt.date2num(ts) for ts in data.timestamps.astype("datetime64[us]").tolist()])
        self._thread: threading.Thread | None = None
        self._to_env: queue.Queue = queue.Queue()
        self._from_env: queue.Queue = queue.Queue()
        self._bt_value = float(self.config.initial_cash)
        self._error: BaseException | None = None

    # --- worker --------------------------------------------------------------------------------------

    def _run_cerebro(self, start: int, stop: int, to_env: queue.Queue, from_env: queue.Queue) -> None:
        c = self.config
        try:
            cerebro = bt.Cerebro(stdstats=False, runonce=False, preload=False, quicknotify=False)
            d = self.data
            cerebro.adddata(_ArrayFeed(arrays=(self._dates[start:stop], d.open[start:stop], d.high[start:stop],
                                               d.low[start:stop], d.close[start:stop], d.volume[start:stop])))
            cerebro.addstrategy(_Bridge, to_env=to_env, from_env=from_env, last_bar=stop - 1 - start)
            broker = cerebro.broker
            broker.set_cash(c.initial_cash)
            broker.set_coc(False)
            broker.set_coo(False)
            broker.set_checksubmit(False)
            broker.set_shortcash(True)
            broker.set_slippage_perc(c.slip_perc, slip_open=True, slip_limit=True, slip_match=True, slip_out=False)
            broker.addcommissioninfo(_CommInfo(commission=c.commission_rate, min_commission=c.commission_min,
                                               leverage=c.margin_leverage))
            cerebro.run()
        except _Stop:
            pass
        except BaseException as exc:  # handed to the env thread, which raises it
            logger.exception("backtrader worker failed")
            to_env.put(("error", exc))
        finally:
            to_env.put(("done",))

    def _receive(self) -> tuple:
        while True:
            try:
                msg = self._to_env.get(timeout=_TIMEOUT)
            except queue.Empty:
                raise RuntimeError("backtrader worker did not answer within "
                                   f"{_TIMEOUT:.0f} s") from None
            if msg[0] == "error":
                raise RuntimeError(f"backtrader worker failed: {msg[1]!r}") from msg[1]
            if msg[0] == "done":
                raise RuntimeError("backtrader worker ended before the episode did")
            return msg

    def _stop_worker(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._thread = None
        if thread.is_alive():
            self._from_env.put(("stop",))
            thread.join(timeout=_TIMEOUT)
            if thread.is_alive():
                raise RuntimeError("backtrader worker did not stop")

    def _reset_engine(self) -> None:
        self._stop_worker()
        # fresh queues: nothing of the old episode can leak into the next one
        self._to_env, self._from_env = queue.Queue(), queue.Queue()
        self._thread = threading.Thread(target=self._run_cerebro, name="backtrader-env",
                                         args=(self.t0, self.t_end + 1, self._to_env, self._from_env), daemon=True)
        self._thread.start()
        _, cash, size, price, value, _ = self._receive()
        self.cash, self.units, self.avg_price, self._bt_value = cash, size, price, value

    # --- engine hooks ----------------------------------------------------------------------------------

    def _advance(self, qty: float, limit: float) -> tuple[float, float, float, float]:
        if self._thread is None:
            raise RuntimeError("call reset() before step()")
        self._from_env.put(("order", qty, limit))
        _, cash, size, avg, value, (executed, price, commission) = self._receive()
        t1 = self.t = self.t + 1
        self.cash, self.units, self.avg_price, self._bt_value = cash, size, avg, value
        if self.t >= self.t_end:
            self._thread.join(timeout=_TIMEOUT)  # the run ends after the last bar
            self._thread = None
        if not executed:
            return 0.0, 0.0, 0.0, 0.0
        o = self._open[t1]
        at_open = limit != limit or (limit >= o if qty > 0 else limit <= o)
        reference = o if at_open else price
        return executed, price, commission, abs(executed) * abs(price - reference)

    def _mark(self) -> float:
        return self._bt_value

    def close(self) -> None:
        self._stop_worker()
        super().close()

    def __del__(self) -> None:
        try:
            self._stop_worker()
        except Exception:  # interpreter shutdown: nothing left to clean
            pass

