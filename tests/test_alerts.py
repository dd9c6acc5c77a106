"""automation.alerts against a real local SMTP server (plain and STARTTLS) and a real local HTTP server."""
from __future__ import annotations

import base64
import json
import logging
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
from email import message_from_bytes
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from automation.alerts import Alert, Notifier

PASSWORD = "s3cret-Pa55word-xyz"
USER = "alert-user@example.org"
HOOK_TOKEN = "T000/B000/hooktokenABCDEF123"


# --- a tiny SMTP server: EHLO, STARTTLS, AUTH PLAIN, MAIL, RCPT, DATA, QUIT -------------------------

class _SMTPHandler(socketserver.StreamRequestHandler):
    def send(self, line: str) -> None:
        self.connection.sendall((line + "\r\n").encode())

    def handle(self) -> None:
        srv: SMTPServer = self.server  # type: ignore[assignment]
        tls = False
        envelope: dict = {"rcpt": []}
        self.send("220 localhost test ESMTP")
        while True:
            raw = self.rfile.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            srv.transcript.append(line)
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                caps = ["localhost"]
                if srv.tls_context is not None and not tls:
                    caps.append("STARTTLS")
                if tls or srv.tls_context is None:
                    caps.append("AUTH PLAIN")
                for cap in caps[:-1]:
                    self.send(f"250-{cap}")
                self.send(f"250 {caps[-1]}")
            elif verb == "STARTTLS" and srv.tls_context is not None:
                self.send("220 ready to start TLS")
                self.connection = srv.tls_context.wrap_socket(self.connection, server_side=True)
                self.rfile = self.connection.makefile("rb")
                tls = True
            elif verb == "AUTH":
                _, mech, payload = line.split(" ", 2)
                _, user, password = base64.b64decode(payload).split(b"\0")
                srv.logins.append({"user": user.decode(), "password": password.decode(), "tls": tls})
                self.send("235 authenticated")
            elif verb == "MAIL":
                envelope = {"from": line, "rcpt": [], "tls": tls}
                self.send("250 ok")
            elif verb == "RCPT":
                envelope["rcpt"].append(line.split(":", 1)[1].strip("<> "))
                self.send("250 ok")
            elif verb == "DATA":
                self.send("354 end with <CRLF>.<CRLF>")
                body = b""
                while True:
                    chunk = self.rfile.readline()
                    if chunk in (b".\r\n", b""):
                        break
                    body += chunk[1:] if chunk.startswith(b"..") else chunk
                envelope["message"] = message_from_bytes(body, policy=default_policy)
                srv.messages.append(envelope)
                self.send("250 queued")
            elif verb == "QUIT":
                self.send("221 bye")
                return
            else:
                self.send("502 not implemented")


class SMTPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, tls_context: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _SMTPHandler)
        self.tls_context = tls_context
        self.messages: list[dict] = []
        self.logins: list[dict] = []
        self.transcript: list[str] = []
        self.errors: list[str] = []

    def handle_error(self, request, client_address) -> None:
        # A client that gives up mid-handshake (the untrusted-certificate test) is expected; record it
        # instead of printing a traceback into the test output.
        import sys

        self.errors.append(repr(sys.exc_info()[1]))


def _serve(server):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed; STARTTLS cannot be tested")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    return cert, key


@pytest.fixture()
def plain_smtp():
    server = _serve(SMTPServer())
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture()
def tls_smtp(certificate):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    server = _serve(SMTPServer(context))
    yield server
    server.shutdown()
    server.server_close()


class _HookHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append({"path": self.path, "body": json.loads(body),  # type: ignore[attr-defined]
                                     "content_type": self.headers["Content-Type"]})
        status = self.server.status  # type: ignore[attr-defined]
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"ok" if status == 200 else b"broken")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def http_hook():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HookHandler)
    server.received = []  # type: ignore[attr-defined]
    server.status = 200  # type: ignore[attr-defined]
    _serve(server)
    yield server
    server.shutdown()
    server.server_close()


def _email_cfg(port: int, starttls: bool) -> dict:
    return {"email": {"enabled": True, "smtp_host": "localhost", "smtp_port": port, "starttls": starttls,
                      "from_addr": "bot@localhost", "to_addrs": ["quant@example.org", "ops@example.org"],
                      "username_env": "T_SMTP_USER", "password_env": "T_SMTP_PASSWORD", "timeout_seconds": 5},
            "webhook": {"enabled": False, "url_env": "T_HOOK_URL", "format": "slack", "timeout_seconds": 5}}


def _alert() -> Alert:
    return Alert(kind="low_sharpe", subject="GOOGL/1d/deepscalper", severity="warning",
                 message="champion r1: test Sharpe ratio 0.120 is below monitoring.min_sharpe_ratio 0.5",
                 details={"sharpe_ratio": 0.12})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_email_plain_smtp_delivers_without_login(plain_smtp, caplog):
    env = {"T_SMTP_USER": USER, "T_SMTP_PASSWORD": PASSWORD}
    caplog.set_level(logging.DEBUG)
    result = Notifier(_email_cfg(plain_smtp.server_address[1], starttls=False), env=env).send(_alert())
    assert result == {"log": "sent", "email": "sent"}
    assert len(plain_smtp.messages) == 1
    msg = plain_smtp.messages[0]
    assert msg["rcpt"] == ["quant@example.org", "ops@example.org"]
    assert msg["message"]["Subject"] == "[trading-bot WARNING] low_sharpe: GOOGL/1d/deepscalper"
    assert "test Sharpe ratio 0.120" in msg["message"].get_content()
    # Without TLS the credentials are never sent.
    assert plain_smtp.logins == []
    assert not any(line.upper().startswith("AUTH") for line in plain_smtp.transcript)
    assert "starttls is off" in caplog.text
    assert PASSWORD not in caplog.text and USER not in caplog.text


def test_email_starttls_logs_in_over_tls(tls_smtp, certificate, monkeypatch, caplog):
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # trust the self-signed test certificate
    monkeypatch.setenv("T_SMTP_USER", USER)
    monkeypatch.setenv("T_SMTP_PASSWORD", PASSWORD)
    caplog.set_level(logging.DEBUG)
    result = Notifier(_email_cfg(tls_smtp.server_address[1], starttls=True)).send(_alert())
    assert result["email"] == "sent"
    assert tls_smtp.logins == [{"user": USER, "password": PASSWORD, "tls": True}]
    assert [m["tls"] for m in tls_smtp.messages] == [True]
    assert "STARTTLS" in tls_smtp.transcript
    assert PASSWORD not in caplog.text


def test_email_refuses_an_untrusted_certificate(tls_smtp, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-bundle.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    env = {"T_SMTP_USER": USER, "T_SMTP_PASSWORD": PASSWORD}
    result = Notifier(_email_cfg(tls_smtp.server_address[1], starttls=True), env=env).send(_alert())
    assert result["email"].startswith("failed:") and "CERTIFICATE_VERIFY_FAILED" in result["email"]
    assert tls_smtp.logins == [] and tls_smtp.messages == []
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize("fmt", ["slack", "json"])
def test_webhook_posts_to_a_local_http_server(http_hook, fmt, caplog):
    url = f"http://127.0.0.1:{http_hook.server_address[1]}/services/{HOOK_TOKEN}"
    cfg = {"email": {"enabled": False}, "webhook": {"enabled": True, "url_env": "T_HOOK_URL", "format": fmt,
                                                    "timeout_seconds": 5}}
    caplog.set_level(logging.DEBUG)
    result = Notifier(cfg, env={"T_HOOK_URL": url}).send(_alert())
    assert result == {"log": "sent", "webhook": "sent"}
    [got] = http_hook.received
    assert got["path"] == f"/services/{HOOK_TOKEN}" and got["content_type"] == "application/json"
    if fmt == "slack":
        assert got["body"]["text"].startswith("*[trading-bot WARNING] low_sharpe: GOOGL/1d/deepscalper*\n")
    else:
        assert got["body"]["kind"] == "low_sharpe" and got["body"]["details"] == {"sharpe_ratio": 0.12}
    assert HOOK_TOKEN not in caplog.text


def test_failing_notifiers_are_logged_and_never_raise(http_hook, caplog):
    http_hook.status = 500
    url = f"http://127.0.0.1:{http_hook.server_address[1]}/services/{HOOK_TOKEN}"
    cfg = _email_cfg(_free_port(), starttls=True)  # nothing listens there
    cfg["webhook"]["enabled"] = True
    env = {"T_HOOK_URL": url, "T_SMTP_USER": USER, "T_SMTP_PASSWORD": PASSWORD}
    caplog.set_level(logging.DEBUG)
    result = Notifier(cfg, env=env).send(_alert())
    assert result["log"] == "sent"
    assert result["email"].startswith("failed: ConnectionRefusedError")
    assert result["webhook"] == "failed: RuntimeError: HTTP 500 Internal Server Error"
    assert len(http_hook.received) == 1
    assert "ALERT [trading-bot WARNING] low_sharpe" in caplog.text
    for secret in (HOOK_TOKEN, PASSWORD, USER, url):
        assert secret not in caplog.text and secret not in json.dumps(result)


def test_missing_webhook_url_and_recipients_fail_cleanly():
    cfg = {"email": {"enabled": True, "to_addrs": []}, "webhook": {"enabled": True, "url_env": "T_NOT_SET"}}
    result = Notifier(cfg, env={}).send(_alert())
    assert result["email"] == "failed: ValueError: alerts.email.to_addrs is empty"
    assert "T_NOT_SET" in result["webhook"] and result["webhook"].startswith("failed:")
    bad_scheme = Notifier({"webhook": {"enabled": True, "url_env": "U"}}, env={"U": "file:///etc/passwd"})
    assert "must start with http" in bad_scheme.send(_alert())["webhook"]


def test_redaction_covers_url_token_and_password():
    notifier = Notifier(_email_cfg(25, True) | {"webhook": {"url_env": "U"}},
                        env={"U": f"https://hooks.example.com/services/{HOOK_TOKEN}", "T_SMTP_PASSWORD": PASSWORD})
    text = notifier.redact(f"failed posting /services/{HOOK_TOKEN} with {PASSWORD}")
    assert HOOK_TOKEN not in text and PASSWORD not in text and text.count("***") == 2
    assert set(notifier.secret_env_names()) == {"T_SMTP_USER", "T_SMTP_PASSWORD", "U"}
    with pytest.raises(ValueError):
        Alert(kind="x", subject="y", message="z", severity="urgent")
