"""Alerts: always to the log, and to email (SMTP + STARTTLS) and a Slack/generic webhook when configured.

Configuration lives in the ``alerts`` section of training_config.json; secrets never do. They come from
environment variables whose NAMES the config holds:

- email: ``alerts.email.username_env`` / ``password_env`` (default ``TRADING_BOT_SMTP_USER`` /
  ``TRADING_BOT_SMTP_PASSWORD``). Credentials are only ever sent after STARTTLS; with ``starttls: false``
  (a local relay) the message is sent without logging in. The server certificate is verified against the
  system's CA store (``SSL_CERT_FILE`` points OpenSSL at a private CA bundle).
- webhook: ``alerts.webhook.url_env`` (default ``TRADING_BOT_WEBHOOK_URL``); ``format: slack`` posts
  ``{"text": ...}`` (Slack incoming webhooks, Mattermost, Discord's ``/slack`` endpoint), ``format: json``
  posts the alert's fields.

A notifier that fails (server down, bad credentials, HTTP 500) is logged and reported in the delivery
result; :meth:`Notifier.send` never raises. Secret values (password, user name, webhook URL) are replaced
by ``***`` in everything this module logs or returns.
"""
from __future__ import annotations

import json
import logging
import os
import smtplib
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

from botcore.redact import redact

logger = logging.getLogger(__name__)

SEVERITIES = ("info", "warning", "critical")


@dataclass
class Alert:
    """One alert.

    :param kind: machine-readable cause: ``job_failed``, ``job_skipped``, ``low_sharpe``, ``drawdown``,
        ``degradation``, ``stale_data``, ``evaluation_output`` ...
    :param subject: what it is about, e.g. ``GOOGL/1d/deepscalper`` or ``training``.
    :param message: one or a few readable sentences with the numbers that triggered it.
    :param severity: ``info``, ``warning`` or ``critical``.
    :param time: ISO 8601 UTC; filled in when empty.
    :param details: numbers behind the message (JSON-able).
    """

    kind: str
    subject: str
    message: str
    severity: str = "warning"
    time: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")
        if not self.time:
            self.time = datetime.now(UTC).isoformat(timespec="seconds")

    @property
    def title(self) -> str:
        return f"[trading-bot {self.severity.upper()}] {self.kind}: {self.subject}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Notifier:
    """Deliver alerts to the configured channels.

    :param alerts_cfg: the ``alerts`` section of the config.
    :param env: where secrets are read from (default ``os.environ``; tests pass a dict).
    """

    def __init__(self, alerts_cfg: Mapping[str, Any], env: Mapping[str, str] | None = None) -> None:
        self.email_cfg = dict(alerts_cfg.get("email", {}))
        self.webhook_cfg = dict(alerts_cfg.get("webhook", {}))
        self.env = os.environ if env is None else env

    # --- secrets ------------------------------------------------------------------------------------

    def _secret(self, name_key: str, section: Mapping[str, Any]) -> str:
        var = section.get(name_key)
        return self.env.get(var, "") if var else ""

    def secrets(self) -> list[str]:
        """The secret values in use (for redaction), longest first."""
        values = [self._secret("password_env", self.email_cfg), self._secret("username_env", self.email_cfg)]
        url = self._secret("url_env", self.webhook_cfg)
        if url:
            values.append(url)
            parsed = urllib.parse.urlsplit(url)
            tail = parsed.path + (f"?{parsed.query}" if parsed.query else "")
            if len(tail) > 1:
                values.append(tail)  # the token part of e.g. https://hooks.slack.com/services/T/B/XXXX
        return sorted({v for v in values if len(v) >= 3}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """``text`` through the toolkit's one redaction (:func:`botcore.redact.redact`), with this notifier's
        secret values added to what it masks."""
        return redact(text, known=self.secrets())

    def secret_env_names(self) -> list[str]:
        """Names of the environment variables that hold secrets (child processes do not need them)."""
        names = [self.email_cfg.get("username_env"), self.email_cfg.get("password_env"),
                 self.webhook_cfg.get("url_env")]
        return [n for n in names if n]

    # --- delivery -----------------------------------------------------------------------------------

    def send(self, alert: Alert) -> dict[str, str]:
        """Log the alert and deliver it to every enabled channel.

        :return: channel -> ``"sent"`` or ``"failed: <reason>"`` (``log`` is always ``"sent"``).
        """
        log = logger.error if alert.severity == "critical" else logger.warning
        log("ALERT %s", self.redact(f"{alert.title}: {alert.message}"))
        result = {"log": "sent"}
        for channel, enabled, deliver in (("email", self.email_cfg.get("enabled"), self._send_email),
                                          ("webhook", self.webhook_cfg.get("enabled"), self._send_webhook)):
            if not enabled:
                continue
            try:
                deliver(alert)
            except Exception as exc:  # noqa: BLE001 (a notifier never breaks the job that raised the alert)
                reason = self.redact(f"{type(exc).__name__}: {exc}")
                logger.error("alert not delivered by %s: %s", channel, reason)
                result[channel] = f"failed: {reason}"
            else:
                logger.info("alert delivered by %s", channel)
                result[channel] = "sent"
        return result

    def _send_email(self, alert: Alert) -> None:
        cfg = self.email_cfg
        recipients = list(cfg.get("to_addrs") or [])
        if not recipients:
            raise ValueError("alerts.email.to_addrs is empty")
        msg = EmailMessage()
        msg["Subject"] = self.redact(alert.title)
        msg["From"] = cfg.get("from_addr", "trading-bot@localhost")
        msg["To"] = ", ".join(recipients)
        body = [alert.message, "", f"time: {alert.time}", f"severity: {alert.severity}", f"kind: {alert.kind}",
                f"subject: {alert.subject}"]
        if alert.details:
            body += ["", json.dumps(alert.details, indent=2, default=str)]
        msg.set_content(self.redact("\n".join(body)) + "\n")
        user = self._secret("username_env", cfg)
        password = self._secret("password_env", cfg)
        timeout = float(cfg.get("timeout_seconds", 10))
        with smtplib.SMTP(cfg.get("smtp_host", "localhost"), int(cfg.get("smtp_port", 587)), timeout=timeout) as smtp:
            smtp.ehlo()
            if cfg.get("starttls", True):
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
                if user and password:
                    smtp.login(user, password)
            elif user and password:
                logger.warning("alerts.email: starttls is off, so the SMTP credentials are not sent "
                               "(sending without login)")
            smtp.send_message(msg, to_addrs=recipients)

    def _send_webhook(self, alert: Alert) -> None:
        cfg = self.webhook_cfg
        var = cfg.get("url_env", "")
        url = self.env.get(var, "") if var else ""
        if not url:
            raise ValueError(f"environment variable {var} (alerts.webhook.url_env) is not set")
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"the URL in {var} must start with http:// or https://")
        if cfg.get("format", "slack") == "slack":
            payload: dict[str, Any] = {"text": self.redact(f"*{alert.title}*\n{alert.message}")}
        else:
            payload = json.loads(self.redact(json.dumps(alert.to_dict(), default=str)))
        request = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"), method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "User-Agent": "trading-bot-alerts"})
        try:
            with urllib.request.urlopen(request, timeout=float(cfg.get("timeout_seconds", 10))) as response:
                response.read()
        except urllib.error.HTTPError as exc:  # its str() holds no URL; keep it that way
            raise RuntimeError(f"HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise RuntimeError(f"cannot reach {urllib.parse.urlsplit(url).hostname}: {exc.reason}") from None
