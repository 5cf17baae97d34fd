"""Caption backends: the OpenAI-compatible client against a local fake server, vLLM without vLLM, the resource."""

from __future__ import annotations

import base64
import binascii
import io
import json
import socket
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from resources.captioner import (
    CaptionBackendError,
    CaptionerResource,
    ChatRequest,
    OpenAICompatibleClient,
    SamplingConfig,
    VllmEngine,
)

MODEL = "test-vlm"
PNG_PREFIX = "data:image/png;base64,"


def png_bytes(color: tuple[int, int, int] = (10, 120, 30), size: tuple[int, int] = (4, 3)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


class FakeChatServer:
    """POST /v1/chat/completions that checks each request and answers n captions echoing the seed.

    A request that breaks the contract gets a 400 naming the problem, so the client fails loudly."""

    def __init__(self) -> None:
        self.model = MODEL
        self.sampling = SamplingConfig()
        self.expect_key: str | None = None
        self.expect_system: str | None = None
        self.expect_png: bytes | None = None
        self.fail_first = 0
        self.fail_status = 503
        self.status: int | None = None
        self.error_body = b'{"error": "forced failure"}'
        self.answer = "ok"
        self.delay_s = 0.0
        self.attempts = 0
        self.payloads: list[dict] = []
        self.lock = threading.Lock()
        self.httpd = _QuietServer(("127.0.0.1", 0), _ChatHandler)
        self.httpd.fake = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def client(self, **kwargs) -> OpenAICompatibleClient:
        kwargs.setdefault("backoff_s", 0.01)
        kwargs.setdefault("timeout_s", 5)
        return OpenAICompatibleClient(self.base_url, self.model, **kwargs)

    def problem(self, path: str, headers, raw: bytes) -> str | None:
        if path != "/v1/chat/completions":
            return f"wrong path {path}"
        try:
            payload = json.loads(raw)
        except ValueError:
            return "body is not JSON"
        if payload.get("model") != self.model:
            return f"model {payload.get('model')!r} != {self.model!r}"
        for key in ("n", "temperature", "top_p", "max_tokens"):
            if payload.get(key) != getattr(self.sampling, key):
                return f"{key} {payload.get(key)!r} != {getattr(self.sampling, key)!r}"
            if getattr(self.sampling, key) is None and key in payload:  # unset: the model's default, nothing sent
                return f"{key} sent though unset"
        if not isinstance(payload.get("seed"), int):
            return f"seed {payload.get('seed')!r} is not an int"
        auth = headers.get("Authorization")
        if auth != (f"Bearer {self.expect_key}" if self.expect_key else None):
            return f"Authorization header {auth!r}"
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            return "no messages"
        if self.expect_system is not None:
            if messages[0] != {"role": "system", "content": self.expect_system}:
                return f"system message {messages[0]!r}"
            messages = messages[1:]
        if len(messages) != 1 or messages[0].get("role") != "user" or not isinstance(messages[0].get("content"), list):
            return f"expected one user message with a content list, got {messages!r}"
        parts = messages[0]["content"]
        texts = [p for p in parts if p.get("type") == "text" and isinstance(p.get("text"), str)]
        images = [p for p in parts if p.get("type") == "image_url"]
        if len(texts) != 1 or len(texts) + len(images) != len(parts):
            return f"content parts {parts!r}"
        if self.expect_png is None:
            return f"unexpected image parts {images!r}" if images else None
        if len(images) != 1:
            return f"expected one image part, got {len(images)}"
        url = images[0].get("image_url", {}).get("url", "")
        if not url.startswith(PNG_PREFIX):
            return f"image url starts {url[:40]!r}"
        try:
            decoded = base64.b64decode(url[len(PNG_PREFIX) :], validate=True)
        except binascii.Error:
            return "image is not valid base64"
        return None if decoded == self.expect_png else "image bytes differ from the PNG sent"

    def reply(self, payload: dict) -> bytes:
        n, seed = payload["n"], payload["seed"]
        choices = [
            {"index": j, "message": {"role": "assistant", "content": f"  seed={seed} caption {j}\n"}, "finish_reason": "stop"}
            for j in range(n)
        ]
        if self.answer == "garbage":
            return b"<html>502 bad gateway, but with status 200</html>"
        if self.answer == "no_choices":
            return json.dumps({"object": "chat.completion"}).encode()
        if self.answer == "no_content":
            choices[1]["message"]["content"] = None
        if self.answer == "short":
            choices = choices[:2]
        if self.answer == "empty":
            choices[3]["message"]["content"] = " \n "
        return json.dumps({"id": "x", "object": "chat.completion", "choices": choices}).encode()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeChatServer

    def handle_error(self, request, client_address) -> None:  # clients that gave up (timeouts) break pipes
        pass


class _ChatHandler(BaseHTTPRequestHandler):
    server: _QuietServer

    def log_message(self, format, *args) -> None:
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        fake = self.server.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with fake.lock:
            fake.attempts += 1
            attempt = fake.attempts
        if fake.delay_s:
            time.sleep(fake.delay_s)
        if fake.status is not None:
            return self._send(fake.status, fake.error_body)
        if attempt <= fake.fail_first:
            return self._send(fake.fail_status, b"overloaded, try later")
        problem = fake.problem(self.path, self.headers, raw)
        if problem:
            return self._send(400, f"bad request: {problem}".encode())
        payload = json.loads(raw)
        with fake.lock:
            fake.payloads.append(payload)
        return self._send(200, fake.reply(payload))


@pytest.fixture
def server():
    fake = FakeChatServer()
    fake.thread.start()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# --- OpenAI-compatible client ------------------------------------------------------------------


def test_payload_structure_and_url():
    client = OpenAICompatibleClient("http://127.0.0.1:8000/v1/", "m")
    assert client.url == "http://127.0.0.1:8000/v1/chat/completions"
    image = png_bytes()
    payload = client.build_payload(ChatRequest("describe", system="be brief", image_png=image), SamplingConfig(), seed=9)
    assert payload["model"] == "m" and payload["seed"] == 9
    # the default sends no temperature / top_p: the model's own defaults (the release's Vision captions)
    assert {k: payload.get(k) for k in ("n", "temperature", "top_p", "max_tokens")} == {
        "n": 5, "temperature": None, "top_p": None, "max_tokens": 100,
    }
    assert "temperature" not in payload and "top_p" not in payload
    greedy = client.build_payload(ChatRequest("d"), SamplingConfig(temperature=0.0), seed=1)
    assert greedy["temperature"] == 0.0 and "top_p" not in greedy
    system, user = payload["messages"]
    assert system == {"role": "system", "content": "be brief"}
    assert user["role"] == "user"
    assert [part["type"] for part in user["content"]] == ["text", "image_url"]  # text before the image, as the release
    parts = {part["type"]: part for part in user["content"]}
    assert parts["text"] == {"type": "text", "text": "describe"}
    assert base64.b64decode(parts["image_url"]["image_url"]["url"].removeprefix(PNG_PREFIX)) == image
    plain = client.build_payload(ChatRequest("describe"), SamplingConfig(), seed=0)
    assert plain["messages"] == [{"role": "user", "content": [{"type": "text", "text": "describe"}]}]
    assert "sekrit" not in repr(OpenAICompatibleClient("http://h/v1", "m", api_key="sekrit"))


def test_captions_with_image_system_and_key(server):
    image = png_bytes()
    server.expect_key, server.expect_system, server.expect_png = "sekrit", "You caption satellite images.", image
    server.sampling = sampling = SamplingConfig(n=3, temperature=0.5, top_p=0.9, seed=40, max_tokens=64)
    requests = [ChatRequest("Describe the tile.", system=server.expect_system, image_png=image)] * 2
    captions = server.client(api_key="sekrit").caption(requests, sampling)
    assert captions == [[f"seed={40 + i} caption {j}" for j in range(3)] for i in range(2)]
    assert sorted(p["seed"] for p in server.payloads) == [40, 41] and server.attempts == 2


def test_text_only_request_sends_no_key_and_explicit_seeds(server):
    captions = server.client().caption([ChatRequest("a"), ChatRequest("b")], SamplingConfig(), seeds=[7, 3])
    assert [c[0] for c in captions] == ["seed=7 caption 0", "seed=3 caption 0"]
    assert all(len(c) == 5 for c in captions)
    with pytest.raises(ValueError, match="2 seeds for 1 requests"):
        server.client().caption([ChatRequest("a")], SamplingConfig(), seeds=[1, 2])
    assert server.client().caption([], SamplingConfig()) == []


@pytest.mark.parametrize("status", [503, 429])
def test_transient_failures_are_retried(server, status):
    server.fail_first, server.fail_status = 2, status
    server.sampling = SamplingConfig(n=2)
    captions = server.client(retries=3).caption([ChatRequest("x")], server.sampling)
    assert captions == [["seed=0 caption 0", "seed=0 caption 1"]]
    assert server.attempts == 3


def test_persistent_500_fails_after_retries(server):
    server.status = 500
    with pytest.raises(CaptionBackendError, match=r"HTTP 500.*forced failure.*3 attempts") as info:
        server.client(retries=2).caption([ChatRequest("x")], SamplingConfig())
    assert server.base_url in str(info.value) and MODEL in str(info.value)
    assert server.attempts == 3


def test_client_error_is_not_retried(server):
    server.status, server.error_body = 400, b"y" * 1000
    with pytest.raises(CaptionBackendError, match="HTTP 400") as info:
        server.client(retries=3).caption([ChatRequest("x")], SamplingConfig())
    message = str(info.value)
    assert "y" * 300 in message and "y" * 301 not in message
    assert server.attempts == 1


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("garbage", r"malformed answer \(not JSON\).*bad gateway"),
        ("no_choices", r"malformed answer \(no 'choices'"),
        ("no_content", r"malformed answer \(choice 1 has no string"),
        ("short", "returned 2 of 5 captions"),
        ("empty", r"empty caption \(choice 3"),
    ],
)
def test_bad_answers_fail_without_retry(server, answer, expected):
    server.answer = answer
    with pytest.raises(CaptionBackendError, match=expected) as info:
        server.client(retries=3).caption([ChatRequest("x")], SamplingConfig())
    assert "request 0" in str(info.value) and server.base_url in str(info.value)
    assert server.attempts == 1


def test_slow_answer_times_out(server):
    server.delay_s = 1.0
    start = time.perf_counter()
    with pytest.raises(CaptionBackendError, match="timeout") as info:
        server.client(timeout_s=0.3, retries=0).caption([ChatRequest("x")], SamplingConfig())
    assert time.perf_counter() - start < 0.9
    assert server.base_url in str(info.value)


def test_nothing_listening_is_down():
    url = dead_url()
    client = OpenAICompatibleClient(url, MODEL, retries=1, backoff_s=0.01, timeout_s=2)
    with pytest.raises(CaptionBackendError, match=r"is down: connection refused.*2 attempts") as info:
        client.caption([ChatRequest("x")], SamplingConfig())
    assert f"endpoint {url}/chat/completions" in str(info.value)


def test_concurrent_requests_keep_order(server):
    server.delay_s, server.sampling = 0.2, SamplingConfig(n=1, seed=100)
    requests = [ChatRequest(f"tile {i}") for i in range(8)]
    start = time.perf_counter()
    captions = server.client(concurrency=4).caption(requests, server.sampling)
    elapsed = time.perf_counter() - start
    assert captions == [[f"seed={100 + i} caption 0"] for i in range(8)]
    assert elapsed < 1.0, f"8 requests of 0.2 s on 4 workers took {elapsed:.2f} s"


# --- vLLM in-process engine, without vLLM --------------------------------------------------------


def test_vllm_messages_sampling_and_engine_kwargs():
    image = png_bytes(size=(5, 2))
    messages = VllmEngine.build_messages(ChatRequest("describe", system="be brief", image_png=image))
    assert messages[0] == {"role": "system", "content": "be brief"}
    user = messages[1]
    assert user["role"] == "user" and len(messages) == 2
    assert [part["type"] for part in user["content"]] == ["text", "image_pil"]  # text before the image, as the release
    parts = {part["type"]: part for part in user["content"]}
    assert parts["text"] == {"type": "text", "text": "describe"}
    assert isinstance(parts["image_pil"]["image_pil"], Image.Image) and parts["image_pil"]["image_pil"].size == (5, 2)
    assert VllmEngine.build_messages(ChatRequest("plain")) == [
        {"role": "user", "content": [{"type": "text", "text": "plain"}]}
    ]
    assert VllmEngine.sampling_kwargs(SamplingConfig(), seed=3) == {"n": 5, "seed": 3, "max_tokens": 100}
    assert VllmEngine.sampling_kwargs(SamplingConfig(n=1, temperature=0.7, top_p=0.8), seed=3) == {
        "n": 1, "temperature": 0.7, "top_p": 0.8, "seed": 3, "max_tokens": 100,
    }
    kwargs = VllmEngine("org/vlm", enforce_eager=True).engine_kwargs()
    assert kwargs["model"] == "org/vlm" and kwargs["limit_mm_per_prompt"] == {"image": 1}
    assert kwargs["max_model_len"] == 4096 and kwargs["max_num_seqs"] == 64 and kwargs["enforce_eager"] is True
    assert kwargs["gpu_memory_utilization"] == 0.9 and kwargs["dtype"] == "auto"


def test_vllm_missing_extra_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    engine = VllmEngine("org/vlm")
    with pytest.raises(CaptionBackendError, match=r"needs the vllm extra: pip install -e '\.\[vllm\]'"):
        engine.caption([ChatRequest("x")], SamplingConfig())


def fake_vllm(texts_per_request: list[list[str]]) -> types.ModuleType:
    """A stand-in `vllm` module recording how LLM and SamplingParams are used."""
    module = types.ModuleType("vllm")
    module.created = []
    module.calls = []

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        def __init__(self, **kwargs):
            module.created.append(kwargs)

        def chat(self, messages, sampling_params=None, use_tqdm=True):
            module.calls.append({"messages": messages, "params": sampling_params, "use_tqdm": use_tqdm})
            return [
                types.SimpleNamespace(outputs=[types.SimpleNamespace(text=t) for t in texts])
                for texts in texts_per_request[: len(messages)]
            ]

    module.LLM, module.SamplingParams = LLM, SamplingParams
    return module


def test_vllm_caption_with_a_stand_in_module(monkeypatch):
    module = fake_vllm([[" a\n", "b"], ["c", " d "]])
    monkeypatch.setitem(sys.modules, "vllm", module)
    engine = VllmEngine("org/vlm", max_num_seqs=8)
    requests = [ChatRequest("x", image_png=png_bytes()), ChatRequest("y")]
    assert engine.caption(requests, SamplingConfig(n=2, seed=5)) == [["a", "b"], ["c", "d"]]
    assert engine.caption(requests, SamplingConfig(n=2), seeds=[1, 2]) == [["a", "b"], ["c", "d"]]
    assert len(module.created) == 1 and module.created[0]["max_num_seqs"] == 8  # the model loads once
    first, second = module.calls
    assert first["use_tqdm"] is False and len(first["messages"]) == 2
    assert [p.kwargs["seed"] for p in first["params"]] == [5, 6] and [p.kwargs["seed"] for p in second["params"]] == [1, 2]
    assert first["params"][0].kwargs["max_tokens"] == 100
    with pytest.raises(CaptionBackendError, match="returned 2 of 3 captions"):
        engine.caption(requests, SamplingConfig(n=3))
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm([["ok", "  "]]))
    with pytest.raises(CaptionBackendError, match="empty caption"):
        VllmEngine("org/vlm").caption([ChatRequest("x")], SamplingConfig(n=2))


def test_vllm_unset_sampling_takes_the_model_defaults(monkeypatch):
    """A mode that sends no temperature / top_p gets the model's generation config, as `vllm serve` would."""
    module = fake_vllm([["a"]])
    module.LLM.get_default_sampling_params = lambda self: types.SimpleNamespace(temperature=0.6, top_p=0.95, top_k=20)
    monkeypatch.setitem(sys.modules, "vllm", module)
    engine = VllmEngine("org/vlm")
    engine.caption([ChatRequest("x")], SamplingConfig(n=1, seed=2))
    engine.caption([ChatRequest("x")], SamplingConfig(n=1, seed=2, temperature=0.0))
    vision, hybrid = (call["params"][0].kwargs for call in module.calls)
    assert vision == {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "n": 1, "seed": 2, "max_tokens": 100}
    assert hybrid["temperature"] == 0.0


# --- the resource ---------------------------------------------------------------------------------


def test_resource_offline_and_validation():
    offline = CaptionerResource()
    assert offline.client() is None
    assert offline.client("vllm", "org/pair-model").model == "org/pair-model"  # a plan pair's backend and model
    with pytest.raises(ValueError, match="endpoint"):
        CaptionerResource(backend="openai", model="m").client()
    with pytest.raises(ValueError, match="model"):
        CaptionerResource(backend="openai", endpoint="http://127.0.0.1:8000/v1").client()
    with pytest.raises(ValueError, match="model"):
        CaptionerResource(backend="vllm").client()


def test_resource_openai_reads_key_from_env(server, monkeypatch):
    monkeypatch.setenv("ARAS_CAPTIONER_API_KEY", "from-env")
    resource = CaptionerResource(backend="openai", endpoint=server.base_url + "/", model=MODEL, timeout_s=5, retries=0)
    client = resource.client()
    assert isinstance(client, OpenAICompatibleClient)
    assert client.api_key == "from-env" and client.url == f"{server.base_url}/chat/completions"
    assert client.model == MODEL and resource.client("openai", "other").model == "other"
    server.expect_key, server.sampling = "from-env", SamplingConfig(n=1)
    assert client.caption([ChatRequest("x")], server.sampling) == [["seed=0 caption 0"]]
    monkeypatch.delenv("ARAS_CAPTIONER_API_KEY")
    assert resource.client().api_key == ""


def test_resource_vllm_does_not_import_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    resource = CaptionerResource(backend="vllm", model="org/vlm", max_model_len=2048, limit_mm_per_prompt=2)
    engine = resource.client()
    assert isinstance(engine, VllmEngine) and engine.model == "org/vlm"
    kwargs = engine.engine_kwargs()
    assert kwargs["max_model_len"] == 2048 and kwargs["limit_mm_per_prompt"] == {"image": 2}
