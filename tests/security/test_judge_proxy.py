"""The LLM judge sends harmful prompts and responses only to the URL the user named: a proxy from the
environment (HTTP_PROXY) is used only with ADPO_JUDGE_USE_PROXY=1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer

from adpo.eval.judges import LLMJudge


@contextmanager
def server(seen: list[str]) -> Iterator[str]:
    """An OpenAI-compatible endpoint (or a proxy: it answers any URL) that records the paths it is sent."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.path)
            body = json.dumps({"choices": [{"message": {"content": "no"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    s = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{s.server_port}"
    finally:
        s.shutdown()


def test_judge_ignores_proxy_from_the_environment_unless_asked(monkeypatch):
    judge_seen, proxy_seen = [], []
    with server(judge_seen) as judge_url, server(proxy_seen) as proxy_url:
        for var in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(var, proxy_url)
        for var in ("NO_PROXY", "no_proxy", "ADPO_JUDGE_USE_PROXY"):
            monkeypatch.delenv(var, raising=False)
        j = LLMJudge(judge_url)
        assert j.status == "ok" and [v.label for v in j(["b"], ["r"], [{}])] == ["refused"]
        assert judge_seen == ["/v1/chat/completions"] * 2 and proxy_seen == []
        monkeypatch.setenv("ADPO_JUDGE_USE_PROXY", "1")
        LLMJudge(judge_url)
        assert proxy_seen == [f"{judge_url}/v1/chat/completions"]  # the opt-in does go through the proxy
