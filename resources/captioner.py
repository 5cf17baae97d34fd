"""Caption-generation backends: an OpenAI-compatible HTTP endpoint (e.g. `vllm serve`) or vLLM in-process.

Only the infrastructure lives here (transport, retries, batching, answer validation); prompts and the
offline captioner belong to the caption stage. Both backends take `ChatRequest`s and return, per
request, exactly `n` non-empty stripped captions, or raise `CaptionBackendError`."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import dagster as dg

from aras_assets.errors import BadInputError, TransientError

PNG_DATA_URL_PREFIX = "data:image/png;base64,"
RETRY_STATUSES = frozenset({408, 429})  # plus every 5xx
SNIPPET_CHARS = 300


@dataclass(frozen=True)
class ChatRequest:
    """One caption request: a user prompt, an optional system prompt and an optional PNG image."""

    user: str
    system: str | None = None
    image_png: bytes | None = None


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling for `n` captions per request. `temperature` / `top_p` None: not sent, so the model's
    own defaults apply (the release's Vision captions). `max_tokens` is always sent: vLLM's default is 16."""

    n: int = 5
    temperature: float | None = None
    top_p: float | None = None
    seed: int = 0
    max_tokens: int = 100

    def options(self) -> dict[str, Any]:
        """The sampling fields a backend sends: n, seed, max_tokens, and temperature / top_p when set."""
        chosen = {"temperature": self.temperature, "top_p": self.top_p}
        return {"n": self.n, **{k: v for k, v in chosen.items() if v is not None}, "seed": int(self.seed),
                "max_tokens": self.max_tokens}


class CaptionBackendError(BadInputError, RuntimeError):
    """Any captioning backend failure; the message names the endpoint or model, the request and the cause."""


class CaptionEndpointUnavailable(CaptionBackendError, TransientError):
    """The endpoint is down, times out or keeps answering 5xx / 429: the step retries later."""


class CaptionerConfigError(BadInputError, ValueError):
    """The captioner resource is configured wrongly (no endpoint, no model)."""


def _snippet(text: str | bytes, limit: int = SNIPPET_CHARS) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return text[:limit]


def _request_seeds(count: int, sampling: SamplingConfig, seeds: Sequence[int] | None) -> list[int]:
    if seeds is None:
        return [sampling.seed + i for i in range(count)]
    if len(seeds) != count:
        raise ValueError(f"got {len(seeds)} seeds for {count} requests")
    return [int(s) for s in seeds]


def _validated_captions(texts: Sequence[Any], n: int, where: str) -> list[str]:
    """Exactly `n` stripped captions from the backend's texts, or CaptionBackendError (extra ones are dropped)."""
    if len(texts) < n:
        raise CaptionBackendError(f"{where}: returned {len(texts)} of {n} captions")
    captions = []
    for j, text in enumerate(texts[:n]):
        if not isinstance(text, str):
            raise CaptionBackendError(f"{where}: malformed answer: caption {j} is {type(text).__name__}, not text")
        if not text.strip():
            raise CaptionBackendError(f"{where}: empty caption (choice {j} is {text!r})")
        captions.append(text.strip())
    return captions


class _Retryable(Exception):
    """A transient failure (network, timeout, 5xx, 429): worth another attempt."""

    def __init__(self, message: str, down: bool):
        super().__init__(message)
        self.down = down


class OpenAICompatibleClient:
    """Any OpenAI-compatible chat endpoint (e.g. `vllm serve`), over the standard library only.

    Network errors, timeouts (`timeout_s` per HTTP request), HTTP 5xx and 429 are retried `retries`
    times with backoff `backoff_s * 2**attempt`; other 4xx fail at once. A malformed answer, fewer
    than `n` choices or an empty caption fail at once too: the server gave a definite answer, and
    asking again would not fix it. Requests run on `concurrency` threads; results keep request order."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str = "",
        timeout_s: float = 60,
        retries: int = 3,
        backoff_s: float = 1.0,
        concurrency: int = 8,
    ):
        if not base_url:
            raise CaptionerConfigError("OpenAICompatibleClient needs a base_url such as http://127.0.0.1:8000/v1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout_s = float(timeout_s)
        self.retries = max(0, int(retries))
        self.backoff_s = float(backoff_s)
        self.concurrency = max(1, int(concurrency))

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def __repr__(self) -> str:  # never show the key
        return f"OpenAICompatibleClient(url={self.url!r}, model={self.model!r})"

    def build_payload(self, request: ChatRequest, sampling: SamplingConfig, seed: int) -> dict:
        """The JSON body of one chat completion: n captions for one request, image as a PNG data URL."""
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        content: list[dict[str, Any]] = [{"type": "text", "text": request.user}]  # text first, as the release
        if request.image_png is not None:
            encoded = base64.b64encode(request.image_png).decode("ascii")
            content.append({"type": "image_url", "image_url": {"url": PNG_DATA_URL_PREFIX + encoded}})
        messages.append({"role": "user", "content": content})
        return {"model": self.model, "messages": messages, **sampling.options(), "seed": int(seed)}

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _post_once(self, body: bytes, where: str) -> bytes:
        """One HTTP attempt: the answer body, `_Retryable` for transient failures, CaptionBackendError otherwise."""
        http_request = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(http_request, timeout=self.timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            try:
                detail = _snippet(exc.read())
            except Exception:  # the body is only for the message
                detail = ""
            if exc.code >= 500 or exc.code in RETRY_STATUSES:
                raise _Retryable(f"HTTP {exc.code}: {detail}", down=False) from exc
            raise CaptionBackendError(f"endpoint {self.url} rejected {where}: HTTP {exc.code}: {detail}") from exc
        except urllib.error.URLError as exc:
            raise _Retryable(self._describe(exc.reason), down=True) from exc
        except (OSError, http.client.HTTPException) as exc:  # timeouts and resets while reading the answer
            raise _Retryable(self._describe(exc), down=True) from exc

    def _describe(self, reason: Any) -> str:
        if isinstance(reason, TimeoutError):
            return f"timed out (no answer within timeout_s={self.timeout_s:g} s)"
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused"
        if isinstance(reason, socket.gaierror):
            return f"cannot resolve host ({reason})"
        return str(reason) or type(reason).__name__

    def _post(self, payload: dict, where: str) -> bytes:
        body = json.dumps(payload).encode("utf-8")
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                return self._post_once(body, where)
            except _Retryable as exc:
                if attempt + 1 < attempts:
                    time.sleep(self.backoff_s * 2**attempt)
                    continue
                state = "is down" if exc.down else "keeps failing"
                tries = f"{attempts} attempt" + ("s" if attempts > 1 else "")
                raise CaptionEndpointUnavailable(f"endpoint {self.url} {state}: {exc} ({where}, {tries})") from exc
        raise AssertionError("unreachable")

    def _parse(self, raw: bytes, n: int, where: str) -> list[str]:
        try:
            answer = json.loads(raw)
        except ValueError as exc:
            raise CaptionBackendError(f"{where}: malformed answer (not JSON): {_snippet(raw)!r}") from exc
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list):
            raise CaptionBackendError(f"{where}: malformed answer (no 'choices' list): {_snippet(raw)!r}")
        texts = []
        for j, choice in enumerate(choices):
            message = choice.get("message") if isinstance(choice, dict) else None
            content = message.get("content") if isinstance(message, dict) else None
            if not isinstance(content, str):
                raise CaptionBackendError(
                    f"{where}: malformed answer (choice {j} has no string message.content): {_snippet(json.dumps(choice))!r}"
                )
            texts.append(content)
        return _validated_captions(texts, n, where)

    def _caption_one(self, index: int, request: ChatRequest, sampling: SamplingConfig, seed: int) -> list[str]:
        where = f"endpoint {self.url}, model {self.model!r}, request {index}"
        raw = self._post(self.build_payload(request, sampling, seed), f"model {self.model!r}, request {index}")
        return self._parse(raw, sampling.n, where)

    def caption(
        self, requests: Sequence[ChatRequest], sampling: SamplingConfig, seeds: Sequence[int] | None = None
    ) -> list[list[str]]:
        """`sampling.n` captions per request, in request order; seeds default to `sampling.seed + index`."""
        request_seeds = _request_seeds(len(requests), sampling, seeds)
        jobs = list(zip(range(len(requests)), requests, request_seeds, strict=True))
        if len(jobs) <= 1 or self.concurrency == 1:
            return [self._caption_one(i, r, sampling, s) for i, r, s in jobs]
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(jobs)), thread_name_prefix="captioner")
        try:
            futures = [pool.submit(self._caption_one, i, r, sampling, s) for i, r, s in jobs]
            return [future.result() for future in futures]
        finally:  # on the first failure, drop the requests not yet sent
            pool.shutdown(wait=True, cancel_futures=True)


class VllmEngine:
    """vLLM in-process engine, imported lazily: a clear error when the `vllm` extra is missing.

    The model loads on the first `caption` call and stays on the instance, so reuse one engine."""

    def __init__(
        self,
        model: str,
        max_model_len: int = 4096,
        limit_mm_per_prompt: int = 1,
        max_num_seqs: int = 64,
        gpu_memory_utilization: float = 0.9,
        dtype: str = "auto",
        **engine_kwargs: Any,
    ):
        if not model:
            raise CaptionerConfigError("VllmEngine needs a model (a Hugging Face id or a local path)")
        self.model = model
        self.max_model_len = max_model_len
        self.limit_mm_per_prompt = limit_mm_per_prompt
        self.max_num_seqs = max_num_seqs
        self.gpu_memory_utilization = gpu_memory_utilization
        self.dtype = dtype
        self.extra_engine_kwargs = dict(engine_kwargs)
        self._llm: Any = None

    def __repr__(self) -> str:
        return f"VllmEngine(model={self.model!r})"

    @staticmethod
    def build_messages(request: ChatRequest) -> list[dict]:
        """Chat messages for `LLM.chat`; the image goes in as a PIL image (`image_pil` content part)."""
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        content: list[dict[str, Any]] = [{"type": "text", "text": request.user}]  # text first, as the release
        if request.image_png is not None:
            from PIL import Image

            image = Image.open(io.BytesIO(request.image_png)).convert("RGB")
            content.append({"type": "image_pil", "image_pil": image})
        messages.append({"role": "user", "content": content})
        return messages

    @staticmethod
    def sampling_kwargs(sampling: SamplingConfig, seed: int) -> dict:
        """Keyword arguments for `vllm.SamplingParams`, max_tokens always explicit (vLLM's default is 16);
        temperature / top_p only when set (the rest come from the model's defaults, see `caption`)."""
        return {**sampling.options(), "seed": int(seed)}

    @staticmethod
    def model_defaults(llm: Any) -> dict:
        """The model's own sampling defaults (its generation config), which a bare `SamplingParams`
        would not carry: what a request that sends no temperature / top_p gets from `vllm serve`."""
        getter = getattr(llm, "get_default_sampling_params", None)
        if getter is None:
            return {}
        base = getter()
        return {k: getattr(base, k) for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty") if hasattr(base, k)}

    def engine_kwargs(self) -> dict:
        """Keyword arguments for `vllm.LLM`; extras given to the constructor override the named ones."""
        return {
            "model": self.model,
            "max_model_len": self.max_model_len,
            "limit_mm_per_prompt": {"image": self.limit_mm_per_prompt},
            "max_num_seqs": self.max_num_seqs,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "dtype": self.dtype,
            **self.extra_engine_kwargs,
        }

    def _vllm(self) -> tuple[Any, Any]:
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise CaptionBackendError(
                f"the vllm backend needs the vllm extra: pip install -e '.[vllm]' on a CUDA machine ({exc})"
            ) from exc
        return LLM, SamplingParams

    def _engine(self, llm_class: Any) -> Any:
        if self._llm is None:
            try:
                self._llm = llm_class(**self.engine_kwargs())
            except Exception as exc:
                raise CaptionBackendError(f"vllm could not load model {self.model!r}: {type(exc).__name__}: {exc}") from exc
        return self._llm

    def caption(
        self, requests: Sequence[ChatRequest], sampling: SamplingConfig, seeds: Sequence[int] | None = None
    ) -> list[list[str]]:
        """`sampling.n` captions per request, in request order; seeds default to `sampling.seed + index`."""
        request_seeds = _request_seeds(len(requests), sampling, seeds)
        llm_class, sampling_params_class = self._vllm()
        if not requests:
            return []
        llm = self._engine(llm_class)
        conversations = [self.build_messages(request) for request in requests]
        defaults = self.model_defaults(llm)
        params = [sampling_params_class(**{**defaults, **self.sampling_kwargs(sampling, seed)}) for seed in request_seeds]
        try:
            outputs = llm.chat(conversations, sampling_params=params, use_tqdm=False)
        except Exception as exc:
            raise CaptionBackendError(
                f"vllm model {self.model!r} failed on {len(requests)} requests: {type(exc).__name__}: {exc}"
            ) from exc
        if len(outputs) != len(requests):
            raise CaptionBackendError(f"vllm model {self.model!r} answered {len(outputs)} of {len(requests)} requests")
        return [
            _validated_captions(
                [completion.text for completion in output.outputs], sampling.n, f"vllm model {self.model!r}, request {i}"
            )
            for i, output in enumerate(outputs)
        ]


API_KEY_ENV = "ARAS_CAPTIONER_API_KEY"  # fixed: the only variable the captioner's key is read from


class CaptionerResource(dg.ConfigurableResource):
    """Which captioner the caption stage uses: `offline` (no model, the stage's own captioner), an
    OpenAI-compatible `openai` endpoint, or in-process `vllm`. The API key is read from the one
    environment variable ARAS_CAPTIONER_API_KEY, never from run config: a variable name settable
    in the launchpad could send any secret of the code server's environment to any endpoint. `client()` builds a new
    backend each call (for vllm, a new model load on first use): call it once per run."""

    backend: Literal["offline", "openai", "vllm"] = "offline"
    endpoint: str = ""
    model: str = ""  # served to every pair of the caption plan when set; blank: each pair's caption_models entry
    timeout_s: float = 60.0
    retries: int = 3
    concurrency: int = 8
    max_model_len: int = 4096
    limit_mm_per_prompt: int = 1
    max_num_seqs: int = 64
    gpu_memory_utilization: float = 0.9

    def client(self, backend: str | None = None, model: str | None = None,
               endpoint: str | None = None) -> OpenAICompatibleClient | VllmEngine | None:
        """A client for `backend`, `model` and (openai) `endpoint`, each defaulting to this
        resource's; the caption plan asks one per (method, model) pair."""
        backend = backend or self.backend
        model = model or self.model
        endpoint = endpoint or self.endpoint
        if backend == "offline":
            return None
        if backend == "openai":
            missing = [name for name, value in (("endpoint", endpoint), ("model", model)) if not value]
            if missing:
                raise CaptionerConfigError(
                    f"captioner backend 'openai' needs {' and '.join(missing)} "
                    "(e.g. endpoint='http://127.0.0.1:8000/v1' and the served model name)"
                )
            api_key = os.environ.get(API_KEY_ENV, "")
            return OpenAICompatibleClient(
                endpoint,
                model,
                api_key=api_key,
                timeout_s=self.timeout_s,
                retries=self.retries,
                concurrency=self.concurrency,
            )
        if not model:
            raise CaptionerConfigError("captioner backend 'vllm' needs model (a Hugging Face id or a local path)")
        return VllmEngine(
            model,
            max_model_len=self.max_model_len,
            limit_mm_per_prompt=self.limit_mm_per_prompt,
            max_num_seqs=self.max_num_seqs,
            gpu_memory_utilization=self.gpu_memory_utilization,
        )
