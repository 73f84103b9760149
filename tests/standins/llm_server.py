"""
A loopback HTTP server that speaks the two LLM protocols the proposers use:
  POST /v1/chat/completions   OpenAI chat completions (Authorization: Bearer <key>)
  POST /v1/messages           Anthropic Messages (x-api-key or a bearer token, anthropic-version)
  GET  /v1/models             the model list of either protocol (the proposers' reachability check);
                              answered 401 when refuse_key is set
Each request pops the next scripted reply text (or an int: that HTTP error status); every request
body is kept in `requests` so tests can read what the proposer sent.

    with LLMServer(["reply 1", 500, "reply 2"]) as server:
        server.url                     # http://127.0.0.1:PORT
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROMPT_TOKENS = 1000      # usage reported for every successful call
COMPLETION_TOKENS = 200


class LLMServer:
    def __init__(self, replies, refuse_key=False):
        self.replies = list(replies)
        self.refuse_key = refuse_key
        self.requests = []
        self.model_lists = 0  # GET /v1/models requests
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.endswith("/models"):
                    server._models(self)
                else:
                    server._send(self, 404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self.path.endswith("/chat/completions"):
                    server._chat(self, body)
                elif self.path.endswith("/messages"):
                    server._messages(self, body)
                else:
                    server._send(self, 404, {"error": {"message": f"no route {self.path}"}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def _next(self, body):
        with self._lock:
            self.requests.append(body)
            return self.replies.pop(0) if self.replies else "(the stand-in has no more replies)"

    @staticmethod
    def _send(handler, status, payload):
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _models(self, handler):
        with self._lock:
            self.model_lists += 1
        if self.refuse_key:
            return self._send(handler, 401, {"type": "error", "error": {"type": "authentication_error",
                                                                       "message": "invalid api key"}})
        model = {"id": "stand-in", "object": "model", "type": "model", "created": 0, "owned_by": "stand-in",
                 "display_name": "stand-in", "created_at": "2026-01-01T00:00:00Z"}
        self._send(handler, 200, {"object": "list", "data": [model], "has_more": False, "first_id": "stand-in",
                                  "last_id": "stand-in"})

    def _chat(self, handler, body):
        if not (handler.headers.get("Authorization") or "").startswith("Bearer "):
            return self._send(handler, 401, {"error": {"message": "missing bearer token", "type": "invalid_request_error",
                                                       "code": "invalid_api_key"}})
        reply = self._next(body)
        if isinstance(reply, int):
            return self._send(handler, reply, {"error": {"message": f"stand-in error {reply}", "type": "server_error"}})
        self._send(handler, 200, {
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                      "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}})

    def _messages(self, handler, body):
        key = handler.headers.get("x-api-key") or (handler.headers.get("Authorization") or "").removeprefix("Bearer ")
        if not key or not handler.headers.get("anthropic-version"):
            return self._send(handler, 401, {"type": "error", "error": {"type": "authentication_error",
                                                                       "message": "invalid x-api-key"}})
        if not body.get("max_tokens"):
            return self._send(handler, 400, {"type": "error", "error": {"type": "invalid_request_error",
                                                                       "message": "max_tokens: Field required"}})
        reply = self._next(body)
        if isinstance(reply, int):
            return self._send(handler, reply, {"type": "error", "error": {"type": "api_error",
                                                                         "message": f"stand-in error {reply}"}})
        self._send(handler, 200, {
            "id": f"msg_{len(self.requests)}", "type": "message", "role": "assistant", "model": body.get("model"),
            "content": [{"type": "text", "text": reply}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": COMPLETION_TOKENS,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}})
