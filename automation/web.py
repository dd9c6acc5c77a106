"""The daemon's read-only status page on localhost (``automation.http_port``; off by default).

``/`` is one HTML page: the daemon, what runs now, the champions with their latest results, the paper accounts,
recent jobs and units with their results, the recent alerts, and a link to the latest evaluation report.
``/status.json`` is the same data as ``automate_training.py --status --json``; ``/report`` serves the newest
``results/report_*.html``. Nothing else is served (no other file, no directory listing), only GET and HEAD are
answered, and every value is HTML-escaped: alert messages and errors come from the outside world.
"""
from __future__ import annotations

import html
import json
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from botcore import paths

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"  # never reachable from another machine
STYLE = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1360px;padding:16px;color:#222}
h1{font-size:1.4em} h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;table-layout:fixed;font-size:.9em}
th,td{border:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f4f4f4} .ok{color:#176f2c} .bad{color:#b00020} .muted{color:#777}
"""


def latest_report() -> Path | None:
    """The newest evaluation report (``results/report_*.html``), or None."""
    reports = sorted(paths.results_dir().glob("report_*.html"), key=lambda p: (p.stat().st_mtime, p.name))
    return reports[-1] if reports else None


def _e(value: Any) -> str:
    return html.escape("-" if value is None or value == "" else str(value))


def _table(headers: list[str], rows: list[list[Any]], empty: str) -> str:
    if not rows:
        return f'<p class="muted">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def render_page(st: dict[str, Any]) -> str:
    """The status page for :func:`automation.status.collect_status`'s dict."""
    d = st["daemon"]
    state = "running" if d.get("running") else "not running"
    parts = [f"<h1>Automation status: {_e(st['workspace'])}</h1>",
             f"<p>daemon: <b class=\"{'ok' if d.get('running') else 'bad'}\">{state}</b> (pid {_e(d.get('pid'))}); "
             f"last seen {_e(d.get('last_seen'))}; time zone {_e(st['timezone'])}</p>"]
    parts.append("<h2>Running now</h2>")
    parts.append(_table(["unit", "since", "trigger", "pid"],
                        [[r.get("unit"), r.get("since"), r.get("trigger"), r.get("pid")]
                         for r in st.get("running_now", [])], "nothing is running"))
    parts.append("<h2>Champions</h2>")
    champs = st["champions"]
    if isinstance(champs, dict):
        parts.append(f'<p class="bad">registry unreadable: {_e(champs.get("error"))}</p>')
    else:
        rows = []
        for c in champs:
            test = c.get("latest_test") or {}
            rows.append([c["key"], c["run_id"], c.get("algo"), _fmt(c.get("validation_sharpe")),
                         _fmt(test.get("sharpe_ratio")), _fmt(test.get("max_drawdown_pct")), test.get("time")])
        parts.append(_table(["champion", "run", "algo", "validation Sharpe", "latest test Sharpe",
                             "max drawdown %", "tested"], rows, "no champion registered yet"))
    paper = st.get("paper") or {}
    if paper.get("enabled"):
        parts.append("<h2>Paper trading</h2>")
        rows = []
        for symbol, accounts in sorted((paper.get("symbols") or {}).items()):
            for a in accounts:
                fwd = a.get("forward") or {}
                rows.append([symbol, a.get("role"), a.get("model_type"), a.get("run_id"), _fmt(a.get("equity")),
                             _fmt(a.get("return_pct"), "+.2f"), _fmt(a.get("sharpe")),
                             (a.get("position") or {}).get("units"), _fmt(fwd.get("rolling_psr")),
                             (a.get("last_decision") or {}).get("bar")])
        parts.append(_table(["symbol", "role", "type", "run", "equity", "return %", "Sharpe", "position",
                             "rolling PSR", "last decision"], rows, paper.get("error") or "no paper account yet"))
    parts.append("<h2>Next runs</h2>")
    parts.append(_table(["job", "next run"], [[j, w] for j, w in st["next_runs"].items()], "none scheduled"))
    parts.append("<h2>Latest results</h2>")
    units = sorted(st["units"].items(), key=lambda kv: str(kv[1].get("end") or kv[1].get("start") or ""),
                   reverse=True)
    parts.append(_table(["unit", "outcome", "result or error", "ended"],
                        [[n, u.get("outcome"), u.get("error") or u.get("result"), u.get("end")] for n, u in units],
                        "no unit has run yet"))
    parts.append("<h2>Recent jobs</h2>")
    parts.append(_table(["job", "outcome", "trigger", "start", "end"],
                        [[j, r.get("outcome"), r.get("trigger"), r.get("start"), r.get("end")]
                         for j, r in (st.get("jobs") or {}).items() if r], "no job has run yet"))
    parts.append("<h2>Recent alerts</h2>")
    parts.append(_table(["time", "severity", "kind", "subject", "message"],
                        [[a.get("time"), a.get("severity"), a.get("kind"), a.get("subject"), a.get("message")]
                         for a in reversed(st.get("recent_alerts", []))], "no alerts"))
    report = latest_report()
    parts.append("<h2>Latest evaluation report</h2>")
    parts.append(f'<p><a href="/report">{_e(report.name)}</a></p>' if report
                 else '<p class="muted">no report yet (the evaluation job writes one)</p>')
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"60\">"
            f"<title>trading bot status</title><style>{STYLE}</style></head><body>{''.join(parts)}"
            '<p class="muted"><a href="/status.json">status.json</a></p></body></html>')


class StatusServer:
    """Serves the status page from a daemon thread until :meth:`close`.

    :param status: returns the status dict (called per request; it reads the state files afresh).
    :param port: the TCP port on 127.0.0.1 (0 = any free port; :attr:`port` tells which).
    """

    def __init__(self, status: Callable[[], dict[str, Any]], port: int) -> None:
        self._status = status
        self._lock = threading.Lock()  # one request at a time reads the state (the ledger's connection included)
        handler = self._handler_class()
        self.httpd = ThreadingHTTPServer((HOST, port), handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="status-page", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def start(self) -> StatusServer:
        self.thread.start()
        logger.info("status page on %s (read-only)", self.url)
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def _snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self._status()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._answer(head=False)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(head=True)

            def _refuse(self) -> None:
                self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only page\n", "text/plain", head=False,
                           extra={"Allow": "GET, HEAD"})

            do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

            def _answer(self, head: bool) -> None:
                route = self.path.split("?", 1)[0]
                try:
                    if route == "/":
                        body = render_page(server._snapshot()).encode("utf-8")
                        self._send(HTTPStatus.OK, body, "text/html; charset=utf-8", head)
                    elif route == "/status.json":
                        body = json.dumps(server._snapshot(), indent=2, default=str).encode("utf-8")
                        self._send(HTTPStatus.OK, body, "application/json", head)
                    elif route == "/report":
                        report = latest_report()
                        if report is None:
                            self._send(HTTPStatus.NOT_FOUND, b"no report yet\n", "text/plain", head)
                        else:
                            self._send(HTTPStatus.OK, report.read_bytes(), "text/html; charset=utf-8", head)
                    else:
                        self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain", head)
                except Exception:  # a broken state file must not take the daemon's page (or the daemon) down
                    logger.exception("status page: %s failed", route)
                    self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"status unavailable; see logs/\n", "text/plain",
                               head)

            def _send(self, code: HTTPStatus, body: bytes, ctype: str, head: bool,
                      extra: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                logger.debug("status page: " + fmt, *args)

        return Handler
