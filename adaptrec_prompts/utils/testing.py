"""A scripted OpenAI-compatible chat server on 127.0.0.1, for offline tests of the API request path.

It answers POST /v1/chat/completions like an OpenAI server would. `script` decides each response from
the request number and body: return ("ok", text), ("logprobs", (text, content)) (an answer with OpenAI's
`logprobs.content` list, see `logprobs_content`), ("429", None), ("sleep", seconds) or ("500", None).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def chat_response(text: str, model: str = "mock", logprobs: list[dict] | None = None) -> dict:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    if logprobs is not None:
        choice["logprobs"] = {"content": logprobs}
    return {"id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": model, "choices": [choice],
            "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}


def logprobs_content(text: str, alternatives: dict[str, float], split_digits: bool) -> list[dict]:
    """OpenAI's `logprobs.content` for `text`, tokenized by a real pre-tokenizer (Hugging Face `tokenizers`:
    whitespace/punctuation splits, and with `split_digits` every digit its own token, as Llama, Mistral
    and Gemma tokenize). The first token of the answer field's value gets `alternatives` ({token: logprob})
    as its top logprobs; every other token is certain."""
    from tokenizers import pre_tokenizers

    steps = [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    if split_digits:
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    split = pre_tokenizers.Sequence(steps)

    def tokens(part: str) -> list[str]:
        out = []
        for line_no, line in enumerate(part.split("\n")):
            out += ["\n"] if line_no else []
            start = 0  # each token carries the spaces before it, so the tokens join back into the text
            for _, (_, end) in split.pre_tokenize_str(line):
                out.append(line[start:end])
                start = end
        return out

    header = "[[ ## answer ## ]]\n"
    head, _, value = text.partition(header)
    content = [{"token": t, "logprob": 0.0, "top_logprobs": [{"token": t, "logprob": 0.0}]}
               for t in tokens(head + header)]
    for i, t in enumerate(tokens(value)):
        tops = [{"token": a, "logprob": lp} for a, lp in alternatives.items()] if i == 0 else [{"token": t, "logprob": 0.0}]
        content.append({"token": t, "logprob": alternatives.get(t, 0.0) if i == 0 else 0.0, "top_logprobs": tops})
    return content


class MockOpenAIServer:
    """Context manager: `with MockOpenAIServer(script) as server: server.url` (an api_base ending in /v1)."""

    def __init__(self, script: Callable[[int, dict], tuple[str, object]]):
        self.script = script
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with outer._lock:
                    number = len(outer.requests)
                    outer.requests.append(body)
                    outer.headers.append(dict(self.headers))
                kind, value = outer.script(number, body)
                if kind == "sleep":
                    time.sleep(float(value))
                    kind, value = "ok", "[[ ## answer ## ]]\nlate\n\n[[ ## completed ## ]]"
                if kind == "ok":
                    payload, status = chat_response(str(value), body.get("model", "mock")), 200
                elif kind == "logprobs":
                    text, content = value
                    payload, status = chat_response(str(text), body.get("model", "mock"), content), 200
                elif kind == "429":
                    payload, status = {"error": {"message": "Rate limit reached", "type": "rate_limit_error",
                                                 "code": "rate_limit_exceeded"}}, 429
                else:
                    payload, status = {"error": {"message": "server error", "type": "server_error"}}, 500
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    if status == 429:
                        self.send_header("Retry-After", "0")
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> MockOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
