"""A small OpenAI-compatible chat server on 127.0.0.1 that plays scripted replies and logs every request.

Used by the evaluation tests and ``benchmarks/judge.py``; never reaches outside the machine. It answers
``POST /v1/chat/completions``. What it replies is scripted by markers inside the request's last message
(the prediction text the test wrote), so a test controls each item's fate through its data:

    [[score=N]]      reply {'score': N}              (and 'pred': 'yes'/'no' for zero-shot prompts)
    [[pred=no]]      zero-shot: reply {'pred': 'no', 'score': ...}
    [[reply=TEXT]]   reply TEXT verbatim (malformed replies, code fences, JSON ...; TEXT ends at "]]")
    [[429xK]]        the first K attempts of this request get HTTP 429 (with Retry-After: 0)
    [[500xK]]        the first K attempts get HTTP 500 (any three-digit status works: [[401x1]])
    [[slowxK]]       the first K attempts sleep ``slow_seconds`` before replying (client times out)
    (no marker)      reply {'score': 3} ({'pred': 'yes', 'score': 3} for zero-shot)

Every request is logged with its key (sha256 of the messages), attempt number, HTTP status and whether
the response was written completely. ``latency`` seconds are added to every request. The server shuts
itself down after ``max_lifetime`` seconds, so a test that forgets it cannot hang.

Run standalone: ``python tests/fake_openai_server.py --latency 0.1`` (prints the base URL).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_MARK = re.compile(r"\[\[(.*?)\]\]", re.DOTALL)


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def local_only_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` without proxy settings, so that clients reach 127.0.0.1 directly and nothing else."""
    env = {k: v for k, v in env.items() if k not in PROXY_VARIABLES}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def request_key(messages: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()


class FakeOpenAIServer:
    def __init__(self, latency: float = 0.0, slow_seconds: float = 3.0, max_lifetime: float = 120.0):
        self.latency = latency
        self.slow_seconds = slow_seconds
        self.max_lifetime = max_lifetime
        self.log: list[dict[str, Any]] = []
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self.auth_headers: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm and
                # the client's delayed ACK add ~40 ms to every response.
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                server._handle(self, body)

        class Server(ThreadingHTTPServer):
            # socketserver's default listen backlog is 5: more simultaneous connects get their SYN dropped
            # and the client retries a second later.
            request_queue_size = 128

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._timer = threading.Timer(max_lifetime, self.stop)
        self._timer.daemon = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> "FakeOpenAIServer":
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        self._timer.cancel()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- request log helpers ------------------------------------------------------------------
    def completed(self) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.log if e["status"] == 200 and e["written"]]

    def count(self) -> int:
        with self._lock:
            return len(self.log)

    def reset_log(self) -> None:
        with self._lock:
            self.log.clear()

    # -- behaviour ----------------------------------------------------------------------------
    def _reply_for(self, body: dict[str, Any], attempt: int) -> tuple[int, str, float]:
        """(HTTP status, reply text, extra sleep)."""
        messages = body.get("messages") or []
        text = messages[-1]["content"] if messages else ""
        zeroshot = "'pred'" in text
        score, pred, reply, sleep = "3", "yes", None, 0.0
        for mark in _MARK.findall(text):
            if mark.startswith("reply="):
                reply = mark[len("reply=") :]
            elif mark.startswith("score="):
                score = mark[len("score=") :]
            elif mark.startswith("pred="):
                pred = mark[len("pred=") :]
            else:
                found = re.fullmatch(r"(\d{3}|slow)x(\d+)", mark)
                if found and attempt <= int(found.group(2)):
                    if found.group(1) == "slow":
                        sleep = self.slow_seconds
                    else:
                        return int(found.group(1)), "", 0.0
        if reply is None:
            reply = f"{{'pred': '{pred}', 'score': {score}}}" if zeroshot else f"{{'score': {score}}}"
        return 200, reply, sleep

    def _handle(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        key = request_key(body.get("messages") or [])
        with self._lock:
            attempt = self._attempts.get(key, 0) + 1
            self._attempts[key] = attempt
            self.auth_headers.append(handler.headers.get("Authorization", ""))
        entry = {
            "key": key,
            "attempt": attempt,
            "status": None,
            "written": False,
            "start": time.time(),
            "seed": body.get("seed"),
            "temperature": body.get("temperature"),
            "model": body.get("model"),
        }
        status, reply, sleep = self._reply_for(body, attempt)
        entry["status"] = status
        with self._lock:
            self.log.append(entry)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.latency + sleep)
        finally:
            with self._lock:
                self.in_flight -= 1
        if status == 200:
            payload = {
                "id": f"chatcmpl-{len(self.log)}",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", ""),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        else:
            payload = {"error": {"message": f"scripted {status}", "type": "scripted", "code": None}}
        data = json.dumps(payload).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            if status == 429:
                handler.send_header("Retry-After", "0")
            handler.end_headers()
            handler.wfile.write(data)
            handler.wfile.flush()
            entry["written"] = True
        except (BrokenPipeError, ConnectionResetError):
            entry["written"] = False  # the client gave up (timeout) before the reply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--lifetime", type=float, default=600.0)
    args = parser.parse_args()
    server = FakeOpenAIServer(latency=args.latency, max_lifetime=args.lifetime).start()
    print(server.url, flush=True)
    server._thread.join()


if __name__ == "__main__":
    main()
