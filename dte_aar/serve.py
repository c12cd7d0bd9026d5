"""`dte serve`: the grown model behind an OpenAI-compatible HTTP API.

Any OpenAI client can talk to the model, and the `openai` generator and `dte finetune` are
tested against this server instead of the internet. Endpoints:

- ``GET /v1/models``, ``GET /v1/models/{id}``: the served checkpoint (``dte-cycle-NNNN``; the
  alias ``dte`` also names it) and the models fine-tuned here (``ft:...``).
- ``POST /v1/chat/completions``: messages rendered with :mod:`dte_aar.chat_template`;
  ``stream: true`` answers with server-sent events ending in ``data: [DONE]``.
- ``POST /v1/completions``: raw text continuation, also streamable.
- ``/v1/files`` and ``/v1/fine_tuning/jobs`` (+ retrieve, events, cancel): fine-tuning of
  the local checkpoint, see :mod:`dte_aar.serve_jobs`.

Sampling follows OpenAI's defaults (temperature 1, top_p 1; ``top_k`` is accepted as an
extension) and is reproducible with ``seed`` (choice ``i`` uses ``seed + i``). Bound to
127.0.0.1 unless told otherwise; ``--api-key`` makes every ``/v1`` request carry it as a
bearer token. Requests are limited (:class:`ServeLimits`): a ``max_tokens`` cap and too
many choices answer 400, a body over the size limit 413, more concurrent generations than
allowed 429; every error has OpenAI's shape ``{"error": {message, type, param, code}}``.
Inference runs in worker threads, one model step at a time by default (torch already uses
every core), and requests take turns token by token: the event loop stays free to accept
and stream, and a long request cannot starve a short one.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import anyio
import click
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from dte_aar.agent import Agent, Completion, SamplingParams, checkpoint_file
from dte_aar.chat_template import PERSONA, render_messages, stop_sequences
from dte_aar.cli_options import workspace_option
from dte_aar.serve_jobs import JobError, LocalFiles, LocalFineTuning

BASE_ALIAS = "dte"
log = logging.getLogger(__name__)


class ServeLimits(BaseModel):
    """What one request may ask of the server."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(512, gt=0, description="cap on max_tokens per request")
    default_max_tokens: int = Field(128, gt=0, description="chat max_tokens when unset")
    max_n: int = Field(8, gt=0, description="choices per request")
    max_body_bytes: int = Field(1 << 20, gt=0, description="JSON request body size")
    max_file_bytes: int = Field(64 << 20, gt=0, description="upload size for /v1/files")
    max_concurrent: int = Field(8, gt=0, description="generations in flight; more get 429")
    inference_threads: int = Field(
        1, gt=0, description="model steps run at once (torch already uses every core)"
    )
    finetune_max_steps: int = Field(200, gt=0, description="steps a local fine-tune may take")


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, dict(headers or {})

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.type, "param": self.param}
        return JSONResponse(
            {"error": {**body, "code": self.code}}, self.status, headers=self.headers
        )


# ---------------------------------------------------------------------- request bodies
class _Request(BaseModel):
    """Fields shared by both generation endpoints; unknown OpenAI fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or not all(stops):
            raise APIError(400, "stop must be up to 4 non-empty strings", param="stop")
        return tuple(stops)


class ChatRequest(_Request):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Request):
    prompt: str | list[str]
    echo: bool = False


# ---------------------------------------------------------------------- models
class ModelRegistry:
    """Model ids -> checkpoints; agents are loaded on first use and kept."""

    def __init__(self, workspace: Path, base_id: str, base_path: Path, device: str) -> None:
        self.workspace = workspace
        self.base_id = base_id
        self.device = device
        self.paths: dict[str, Path] = {base_id: base_path}
        self.created: dict[str, int] = {base_id: int(time.time())}
        self.agents: dict[str, Agent] = {}
        self.lock = threading.Lock()

    def add(self, model_id: str, path: Path) -> None:
        with self.lock:
            self.paths[model_id] = Path(path)
            self.created.setdefault(model_id, int(time.time()))

    def resolve(self, model_id: str) -> str:
        model_id = self.base_id if model_id == BASE_ALIAS else model_id
        if model_id not in self.paths:
            raise APIError(
                404,
                f"The model `{model_id}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return model_id

    def agent(self, model_id: str) -> Agent:
        with self.lock:
            if model_id not in self.agents:
                self.agents[model_id] = Agent.load(
                    self.paths[model_id], self.workspace, device=self.device
                )
            return self.agents[model_id]

    def card(self, model_id: str) -> dict[str, Any]:
        owner = "dte-aar" if model_id == self.base_id else "user"
        return {
            "id": model_id,
            "object": "model",
            "created": self.created[model_id],
            "owned_by": owner,
        }


def resolve_checkpoint(workspace: Path, checkpoint: str | Path | None) -> Path:
    """The latest good checkpoint of the workspace, a cycle number, or a path."""
    if checkpoint is None:
        from dte_aar.store import Store

        with Store.open(workspace, readonly=True) as store:
            latest = store.latest_checkpoint()
        if latest is None:
            raise FileNotFoundError(f"{workspace}: no checkpoint yet (run `dte bootstrap`)")
        return latest.path
    if str(checkpoint).isdigit():
        return checkpoint_file(workspace, int(checkpoint))
    return Path(checkpoint)


def _speaker(workspace: Path) -> str:
    """The identity's name, which the chat template gives the assistant."""
    try:
        from dte_aar.arena import load_arena
        from dte_aar.config import load_settings

        return load_arena(load_settings(workspace).arena).identity.name
    except Exception:  # a server without a loadable arena still serves the default persona
        return PERSONA


# ---------------------------------------------------------------------- the guard
class _Guard:
    """ASGI middleware: the bearer key on /v1, then the body size, before any route runs;
    and a crash inside a route becomes an OpenAI-shaped 500 (the connection stays usable).

    The body is read here (counting bytes) and replayed to the app, so a chunked upload is
    held to the limit as strictly as one with a Content-Length."""

    def __init__(self, app: Any, api_key: str | None, limits: ServeLimits) -> None:
        self.app, self.api_key, self.limits = app, api_key, limits

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key is not None and scope["path"].startswith("/v1"):
            given = headers.get("authorization", "")
            expected = f"Bearer {self.api_key}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                message = "Incorrect API key provided." if given else "Missing bearer API key."
                error = APIError(401, message, code="invalid_api_key")
                return await error.response()(scope, receive, send)
        if scope["method"] in ("POST", "PUT", "PATCH"):
            receive = await self._read_body(scope, receive, send, headers)
            if receive is None:
                return
        started = False

        async def watched(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            log.exception("error serving %s", scope["path"])
            if started:
                raise
            message = f"The server had an error processing your request ({type(exc).__name__})."
            await APIError(500, message, type="server_error").response()(scope, receive, send)

    async def _read_body(
        self, scope: dict, receive: Callable, send: Callable, headers: dict[str, str]
    ) -> Callable | None:
        """A receive that replays the body, or None once a 413 (or a disconnect) ended it."""
        files = scope["path"].startswith("/v1/files")
        limit = self.limits.max_file_bytes if files else self.limits.max_body_bytes
        too_big = APIError(413, f"Request body exceeds {limit} bytes.", code="body_too_large")
        if int(headers.get("content-length") or 0) > limit:
            await too_big.response()(scope, receive, send)
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await too_big.response()(scope, receive, send)
                return None
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay


class _Slots:
    """Counts generations in flight (event-loop thread only, so no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self) -> Callable[[], None]:
        if self.used >= self.limit:
            raise APIError(
                429,
                f"Too many concurrent requests (limit {self.limit}); retry shortly.",
                type="requests",
                code="rate_limit_exceeded",
                headers={"retry-after": "1"},
            )
        self.used += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.used -= 1

        return release


class _SlotStream(StreamingResponse):
    """A stream that gives its slot back however it ends (done, error, disconnect)."""

    def __init__(self, content: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream")
        self.release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


def sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()


def stream_error(exc: Exception) -> bytes:
    """An error after the stream's headers went out: reported as an event (the openai client
    raises it), then the stream ends as usual."""
    message = f"{type(exc).__name__}: {exc}"
    return sse({"error": {"message": message, "type": "server_error", "param": None, "code": None}})


def parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """Form fields of a multipart body: name -> (filename, bytes). Stdlib only."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise APIError(400, "expected a multipart/form-data body")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


# ---------------------------------------------------------------------- the app
def create_app(
    workspace: Path,
    checkpoint: str | Path | None = None,
    api_key: str | None = None,
    limits: ServeLimits | None = None,
    device: str = "cpu",
) -> FastAPI:
    """The API for ``workspace``'s latest checkpoint (or ``checkpoint``: a cycle or a path).

    The checkpoint is loaded here, so a missing or corrupt one fails before serving."""
    workspace = Path(workspace)
    limits = limits or ServeLimits()
    path = resolve_checkpoint(workspace, checkpoint)
    registry = ModelRegistry(workspace, f"dte-{path.stem}", path, device)
    base = registry.agent(registry.base_id)
    fingerprint = "fp_" + str(base.meta.get("weights", {}).get("sha256", ""))[:12]
    speaker = _speaker(workspace)
    slots = _Slots(limits.max_concurrent)
    files = LocalFiles(workspace / "serve" / "files")
    jobs = LocalFineTuning(
        workspace / "serve" / "jobs",
        files,
        workspace,
        path,
        speaker,
        limits.finetune_max_steps,
        on_model=registry.add,
        device=device,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.limiter = anyio.CapacityLimiter(limits.inference_threads)
        yield
        jobs.close()

    app = FastAPI(title="dte serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.registry, app.state.jobs, app.state.limits = registry, jobs, limits

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(JobError)
    async def _job_error(request: Request, exc: JobError) -> JSONResponse:
        return APIError(exc.status, str(exc), param=exc.param).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {err['msg']}" if param else err["msg"]
        return APIError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return APIError(exc.status_code, str(exc.detail)).response()

    # ------------------------------------------------------------------ models
    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [registry.card(m) for m in list(registry.paths)]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        return registry.card(registry.resolve(model_id))

    # ------------------------------------------------------------------ generation
    def sampling(req: _Request, max_tokens: int | None, default: int, extra_stops=()) -> Any:
        wanted = max_tokens or default
        if wanted > limits.max_tokens:
            raise APIError(
                400,
                f"max_tokens is too large: {wanted}. This server allows at most "
                f"{limits.max_tokens} completion tokens.",
                param="max_tokens",
                code="invalid_value",
            )
        if req.n > limits.max_n:
            raise APIError(400, f"n must be at most {limits.max_n}", param="n")
        return SamplingParams(
            max_new_tokens=wanted,
            temperature=req.temperature,
            top_k=req.top_k or None,
            top_p=req.top_p if req.top_p < 1 else None,
            stop=tuple(dict.fromkeys((*req.stops(), *extra_stops))),
        )

    def seeds(req: _Request, prompts: int) -> list[int]:
        first = req.seed if req.seed is not None else secrets.randbelow(2**31)
        return [first + i for i in range(prompts * req.n)]

    async def run_batch(agent: Agent, prompts: list[str], params, seed_list) -> list[Completion]:
        """Like ``generate_batch``, a token step at a time, so requests share the model fairly."""
        done: dict[int, Completion] = {}
        async for row, _, completion in stream_rows(agent, prompts, params, seed_list):
            if completion is not None:
                done[row] = completion
        return [done[row] for row in range(len(prompts))]

    async def stream_rows(agent: Agent, prompts: list[str], params, seed_list):
        rows: Iterator = agent.stream_batch(prompts, params, seed_list)
        try:
            while True:
                item = await anyio.to_thread.run_sync(next, rows, None, limiter=app.state.limiter)
                if item is None:
                    return
                yield item
        finally:
            rows.close()

    def usage(completions: list[Completion]) -> dict[str, int]:
        prompt = sum(c.prompt_tokens for c in completions)
        done = sum(c.tokens for c in completions)
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}

    async def start(
        model_id: str, prompts: list[str], params: Any, seed_list: list[int], stream: bool
    ) -> tuple[Any, list[Completion], Callable[[], None]]:
        """Take a request slot and load the agent; without streaming, run the batch now.
        The slot is released here unless a stream still needs it (the stream releases it)."""
        release = slots.take()
        try:
            agent = await anyio.to_thread.run_sync(registry.agent, model_id)
            results = [] if stream else await run_batch(agent, prompts, params, seed_list)
        except BaseException:
            release()
            raise
        if not stream:
            release()
        return agent, results, release

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest) -> Any:
        model_id = registry.resolve(req.model)
        try:
            prompt = render_messages(req.messages, speaker)
        except ValueError as exc:
            raise APIError(400, str(exc), param="messages") from None
        max_tokens = req.max_completion_tokens or req.max_tokens
        params = sampling(req, max_tokens, limits.default_max_tokens, stop_sequences())
        prompts, seed_list = [prompt] * req.n, seeds(req, 1)
        reply_id, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        head = {
            "id": reply_id,
            "created": created,
            "model": model_id,
            "system_fingerprint": fingerprint,
        }
        agent, completions, release = await start(model_id, prompts, params, seed_list, req.stream)
        if not req.stream:
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text.lstrip(), "refusal": None},
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(completions)
            ]
            return {
                **head,
                "object": "chat.completion",
                "choices": choices,
                "usage": usage(completions),
            }

        include_usage = bool((req.stream_options or {}).get("include_usage"))

        def chunk(choices: list[dict], **extra: Any) -> bytes:
            return sse({**head, "object": "chat.completion.chunk", "choices": choices, **extra})

        async def events() -> AsyncIterator[bytes]:
            for i in range(req.n):
                delta = {"role": "assistant", "content": ""}
                yield chunk([{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}])
            started = [False] * req.n
            done: list[Completion] = []
            try:
                async for row, text, completion in stream_rows(agent, prompts, params, seed_list):
                    if not started[row]:
                        text = text.lstrip()
                        started[row] = bool(text)
                    if text:
                        delta = {"content": text}
                        yield chunk(
                            [
                                {
                                    "index": row,
                                    "delta": delta,
                                    "logprobs": None,
                                    "finish_reason": None,
                                }
                            ]
                        )
                    if completion is not None:
                        done.append(completion)
                        yield chunk(
                            [
                                {
                                    "index": row,
                                    "delta": {},
                                    "logprobs": None,
                                    "finish_reason": completion.finish_reason,
                                }
                            ]
                        )
                if include_usage:
                    yield chunk([], usage=usage(done))
            except Exception as exc:  # headers are sent: report in the stream, then end it
                yield stream_error(exc)
            yield b"data: [DONE]\n\n"

        return _SlotStream(events(), release)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Any:
        model_id = registry.resolve(req.model)
        if req.echo:
            raise APIError(400, "echo is not supported", param="echo")
        texts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not texts:
            raise APIError(400, "prompt must not be empty", param="prompt")
        params = sampling(req, req.max_tokens, 16)
        prompts = [t for t in texts for _ in range(req.n)]
        seed_list = seeds(req, len(texts))
        reply_id, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
        head = {
            "id": reply_id,
            "object": "text_completion",
            "created": created,
            "model": model_id,
            "system_fingerprint": fingerprint,
        }
        agent, results, release = await start(model_id, prompts, params, seed_list, req.stream)
        if not req.stream:
            choices = [
                {"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                for i, c in enumerate(results)
            ]
            return {**head, "choices": choices, "usage": usage(results)}

        include_usage = bool((req.stream_options or {}).get("include_usage"))

        async def events() -> AsyncIterator[bytes]:
            done: list[Completion] = []
            try:
                async for row, text, completion in stream_rows(agent, prompts, params, seed_list):
                    finish = completion.finish_reason if completion is not None else None
                    if text or finish:
                        choice = {
                            "index": row,
                            "text": text,
                            "logprobs": None,
                            "finish_reason": finish,
                        }
                        yield sse({**head, "choices": [choice]})
                    if completion is not None:
                        done.append(completion)
                if include_usage:
                    yield sse({**head, "choices": [], "usage": usage(done)})
            except Exception as exc:
                yield stream_error(exc)
            yield b"data: [DONE]\n\n"

        return _SlotStream(events(), release)

    # ------------------------------------------------------------------ files
    @app.post("/v1/files")
    async def upload(request: Request) -> dict[str, Any]:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise APIError(400, "expected multipart/form-data with `file` and `purpose`")
        fields = parse_multipart(await request.body(), content_type)
        if "file" not in fields:
            raise APIError(400, "missing `file`", param="file")
        purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace")
        if purpose not in ("fine-tune", "batch", "assistants", "user_data", "evals"):
            raise APIError(400, f"unsupported purpose {purpose!r}", param="purpose")
        filename, data = fields["file"]
        return await anyio.to_thread.run_sync(files.add, filename or "upload", purpose, data)

    @app.get("/v1/files")
    async def list_files() -> dict[str, Any]:
        return {"object": "list", "data": files.list(), "has_more": False}

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str) -> dict[str, Any]:
        return files.get(file_id)

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str) -> Response:
        return Response(files.content(file_id), media_type="application/octet-stream")

    # ------------------------------------------------------------------ fine-tuning
    @app.post("/v1/fine_tuning/jobs")
    async def create_job(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except json.JSONDecodeError:
            raise APIError(400, "body is not valid JSON") from None
        if not isinstance(body, dict):
            raise APIError(400, "body must be a JSON object")
        return await anyio.to_thread.run_sync(jobs.create, body)

    @app.get("/v1/fine_tuning/jobs")
    async def list_jobs(after: str | None = None, limit: int = 20) -> dict[str, Any]:
        listed = list(reversed(jobs.list()))  # newest first
        if after is not None:
            ids = [j["id"] for j in listed]
            listed = listed[ids.index(after) + 1 :] if after in ids else []
        return {"object": "list", "data": listed[:limit], "has_more": len(listed) > limit}

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    async def get_job(job_id: str) -> dict[str, Any]:
        return jobs.get(job_id)

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    async def job_events(job_id: str, after: str | None = None, limit: int = 20) -> dict:
        data, more = jobs.events(job_id, after, max(1, min(limit, 1000)))
        return {"object": "list", "data": data, "has_more": more}

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str) -> dict[str, Any]:
        return jobs.cancel(job_id)

    app.add_middleware(_Guard, api_key=api_key, limits=limits)
    return app


# ---------------------------------------------------------------------- running it
@contextlib.contextmanager
def running_server(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a background thread; yield its base URL (``.../v1``).

    For tests, benchmarks and notebooks; port 0 picks a free port."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@click.command("serve")
@workspace_option()
@click.option("--checkpoint", help="A cycle number or a checkpoint path (default: the latest).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--api-key",
    envvar="DTE_SERVE_API_KEY",
    help="Require this bearer token on /v1 requests. Env: DTE_SERVE_API_KEY.",
)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, mps.")
@click.option("--max-tokens", type=int, default=512, show_default=True, help="max_tokens cap.")
@click.option("--max-concurrent", type=int, default=8, show_default=True, help="Else 429.")
@click.option("--max-body-bytes", type=int, default=1 << 20, show_default=True)
def serve_command(
    workspace: Path,
    checkpoint: str | None,
    host: str,
    port: int,
    api_key: str | None,
    device: str,
    max_tokens: int,
    max_concurrent: int,
    max_body_bytes: int,
) -> None:
    """Serve the latest (or a named) checkpoint behind an OpenAI-compatible API."""
    import uvicorn

    from dte_aar.checkpoint import CheckpointError
    from dte_aar.store import StoreError

    limits = ServeLimits(
        max_tokens=max_tokens, max_concurrent=max_concurrent, max_body_bytes=max_body_bytes
    )
    try:
        app = create_app(workspace, checkpoint, api_key, limits, device)
    except (CheckpointError, StoreError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        click.echo(f"warning: serving on {host} without --api-key", err=True)
    registry: ModelRegistry = app.state.registry
    click.echo(f"serving {registry.base_id} ({registry.paths[registry.base_id]})")
    click.echo(f"OpenAI base URL: http://{host}:{port}/v1")
    uvicorn.run(app, host=host, port=port, log_level="info")
