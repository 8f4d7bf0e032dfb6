"""A real OpenAI-compatible server on 127.0.0.1: llama.cpp (`llama-cpp-python[server]`) serving a GGUF.

    with LlamaCppServer(gguf_path, threads=2) as server:
        lm = api_lm("openai/gemma-3-270m", api_base=server.url)

The server is a child process (`python -m adaptrec_prompts.backends.llamacpp GGUF --port P`): llama.cpp's
own FastAPI app with the model loaded with all logits (token logprobs need them) and one chat format added,
`adaptrec-plain`: the messages joined exactly as the in-process engine's plain rendering (`HFEngine.render`
for base models such as Gemma 3 270M), so a chat request to the server and an in-process call see the same
prompt text. Other models can use the GGUF's own chat template (`chat_format=None`).

Install: `pip install 'llama-cpp-python[server]'` (builds llama.cpp from source, ~10 minutes on 2 cores).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from adaptrec_prompts.errors import ConfigError

PLAIN_FORMAT = "adaptrec-plain"
INSTALL_HINT = "the llama.cpp server needs: pip install 'llama-cpp-python[server]' (builds from source)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaCppServer:
    """Context manager: a llama.cpp OpenAI-compatible server for `gguf` on 127.0.0.1 (`.url` ends in /v1).

    Args:
        gguf: the model file.
        threads: llama.cpp threads.
        n_ctx: context length.
        chat_format: "adaptrec-plain" (the in-process plain rendering) or None (the GGUF's template).
        alias: the model name the server answers to (`openai/<alias>` in dspy.LM).
        startup_timeout: seconds to wait for the model to load.
        logits_all: keep the logits of every position, which llama-cpp-python needs to return logprobs (score
            mode). It is expensive for a large vocabulary (Gemma: 262k entries, the LM head computed at every
            prompt position); generate-only use should turn it off.
    """

    def __init__(self, gguf: str | Path, threads: int = 2, n_ctx: int = 4096, chat_format: str | None = PLAIN_FORMAT,
                 alias: str = "gemma-3-270m", startup_timeout: float = 180.0, log: str | Path | None = None,
                 logits_all: bool = True):
        self.gguf, self.threads, self.n_ctx, self.chat_format = Path(gguf), threads, n_ctx, chat_format
        self.alias, self.startup_timeout, self.log, self.logits_all = alias, startup_timeout, log, logits_all
        self.port = _free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> LlamaCppServer:
        try:
            import llama_cpp.server  # noqa: F401
        except ImportError:
            raise ConfigError(INSTALL_HINT) from None
        if not self.gguf.is_file():
            raise ConfigError(f"{self.gguf}: no such GGUF file")
        command = [sys.executable, "-m", "adaptrec_prompts.backends.llamacpp", str(self.gguf), "--port", str(self.port),
                   "--threads", str(self.threads), "--n-ctx", str(self.n_ctx), "--alias", self.alias]
        if self.chat_format:
            command += ["--chat-format", self.chat_format]
        if not self.logits_all:
            command.append("--no-logits-all")
        self._log_file = open(self.log, "w") if self.log else None  # noqa: SIM115 - closed in __exit__
        self.process = subprocess.Popen(command, stdout=self._log_file or subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:  # Ctrl-C or a failed start: never leave the server running
            self.__exit__()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ConfigError(f"the llama.cpp server exited with {self.process.returncode} while loading "
                                  f"{self.gguf}" + (f"; see {self.log}" if self.log else ""))
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise ConfigError(f"the llama.cpp server did not answer within {self.startup_timeout:.0f} s")

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log_file", None):
            self._log_file.close()
            self._log_file = None


def _register_plain_format() -> None:
    from llama_cpp import llama_chat_format as formats

    @formats.register_chat_format(PLAIN_FORMAT)
    def plain(messages, **kwargs):  # HFEngine.render for a tokenizer without a chat template
        return formats.ChatFormatterResponse(prompt="\n\n".join(m["content"] or "" for m in messages) + "\n\n")


def main(argv: list[str] | None = None) -> None:
    """The server process: llama.cpp's app with the plain chat format registered."""
    import argparse

    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    p = argparse.ArgumentParser(description="llama.cpp OpenAI-compatible server with the adaptrec-plain format")
    p.add_argument("gguf")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--alias", default="gemma-3-270m")
    p.add_argument("--chat-format")
    p.add_argument("--no-logits-all", action="store_true", help="no logprobs (generate only; much faster)")
    args = p.parse_args(argv)
    _register_plain_format()
    model = ModelSettings(model=args.gguf, model_alias=args.alias, n_threads=args.threads,
                          n_threads_batch=args.threads, n_ctx=args.n_ctx, logits_all=not args.no_logits_all,
                          chat_format=args.chat_format, verbose=False)
    app = create_app(server_settings=ServerSettings(host="127.0.0.1", port=args.port), model_settings=[model])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
