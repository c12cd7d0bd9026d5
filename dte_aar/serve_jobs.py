"""The files and fine-tuning jobs behind `dte serve`'s ``/v1/files`` and ``/v1/fine_tuning``.

OpenAI fine-tunes gpt-4o-mini on an uploaded chat JSONL; `dte serve` does the same to its
own checkpoint, so `dte finetune` and any OpenAI client run the whole path offline. A job
renders each ``{"messages": [...]}`` line as the seed's transcript
(:func:`dte_aar.arena.render_chat`), packs the tokens, and trains every weight of a copy of
the base model for a few steps with the project's training loop, in one background worker
thread. The result is served under an ``ft:`` model id.

State lives in plain files under ``<workspace>/serve/`` (never in dte.db, whose one writer
is the bootstrap loop): ``files/<id>.data`` + ``.json``, ``jobs/<id>.json`` (the job object
and its events), ``models/<job id>.safetensors`` (+ sidecar). A job that was queued or
running when the server stopped runs again, from the start, when it comes back.
"""

from __future__ import annotations

import json
import math
import queue
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dte_aar.arena import render_chat
from dte_aar.atomic import atomic_write_bytes, atomic_write_text
from dte_aar.checkpoint import load_checkpoint, save_checkpoint
from dte_aar.config import TrainSettings
from dte_aar.tokenizer import load_tokenizer
from dte_aar.tokens import PackedTokens
from dte_aar.train import train

TERMINAL = ("succeeded", "failed", "cancelled")
MIN_EXAMPLES = 10  # as OpenAI requires


class JobError(Exception):
    """A request about files or jobs that cannot be served: (status, message, param)."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _write_json(path: Path, value: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(value, indent=1))


class LocalFiles:
    """Uploaded files: ``<id>.data`` holds the bytes, ``<id>.json`` OpenAI's file object."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def add(self, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        file_id = new_id("file")
        atomic_write_bytes(self.root / f"{file_id}.data", data)
        obj = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }
        _write_json(self.root / f"{file_id}.json", obj)
        return obj

    def get(self, file_id: str) -> dict[str, Any]:
        path = self.root / f"{file_id}.json"
        if "/" in file_id or not path.exists():
            raise JobError(404, f"No such File object: {file_id}", "file_id")
        return _read_json(path)

    def content(self, file_id: str) -> bytes:
        self.get(file_id)
        return (self.root / f"{file_id}.data").read_bytes()

    def list(self) -> list[dict[str, Any]]:
        files = [_read_json(p) for p in self.root.glob("*.json")]
        return sorted(files, key=lambda f: f["created_at"], reverse=True)


def training_texts(data: bytes, speaker: str) -> list[str]:
    """The transcripts of a chat fine-tuning JSONL; JobError (400) naming the first bad line."""
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise JobError(400, "training file is not UTF-8 text", "training_file") from None
    texts = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            texts.append(render_chat(json.loads(line), speaker))
        except (json.JSONDecodeError, ValueError) as exc:
            raise JobError(400, f"training file line {lineno}: {exc}", "training_file") from None
    if len(texts) < MIN_EXAMPLES:
        raise JobError(
            400,
            f"training file has {len(texts)} examples; at least {MIN_EXAMPLES} are required",
            "training_file",
        )
    return texts


class LocalFineTuning:
    """Fine-tuning jobs on the served checkpoint, run one at a time by a worker thread.

    ``on_model(model_id, path)`` is called when a job succeeds, so the server can serve it.
    """

    def __init__(
        self,
        root: Path,
        files: LocalFiles,
        workspace: Path,
        base_checkpoint: Path,
        speaker: str,
        max_steps: int,
        on_model: Callable[[str, Path], None],
        device: str = "cpu",
    ) -> None:
        self.root = Path(root)
        self.models = self.root.parent / "models"
        self.root.mkdir(parents=True, exist_ok=True)
        self.files = files
        self.workspace = Path(workspace)
        self.base_checkpoint = Path(base_checkpoint)
        self.speaker = speaker
        self.max_steps = max_steps
        self.on_model = on_model
        self.device = device
        self.lock = threading.Lock()
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.worker = threading.Thread(target=self._work, name="dte-finetune", daemon=True)
        self.worker.start()
        for job in self.list():  # oldest first: resume what a stopped server left
            if job["status"] == "succeeded" and job["fine_tuned_model"]:
                on_model(job["fine_tuned_model"], self.models / f"{job['id']}.safetensors")
            elif job["status"] not in TERMINAL:
                self._update(job["id"], status="queued")
                self._event(job["id"], "Job restarted after a server restart")
                self.queue.put(job["id"])

    def close(self) -> None:
        self.queue.put(None)
        self.worker.join(timeout=30)

    # ------------------------------------------------------------------ the API's verbs
    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        model = body.get("model")
        file_id = body.get("training_file")
        if not isinstance(model, str) or not model:
            raise JobError(400, "model is required", "model")
        if not isinstance(file_id, str):
            raise JobError(400, "training_file is required", "training_file")
        self.files.get(file_id)
        hyper = body.get("hyperparameters") or {}
        method = body.get("method") or {}
        if not hyper and isinstance(method, dict):  # the newer shape: method.supervised
            hyper = ((method.get("supervised") or {}).get("hyperparameters")) or {}
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or len(suffix) > 64):
            raise JobError(400, "suffix must be a string of at most 64 characters", "suffix")
        seed = body.get("seed")
        job_id = new_id("ftjob")
        job = {
            "id": job_id,
            "object": "fine_tuning.job",
            "model": model,
            "created_at": int(time.time()),
            "finished_at": None,
            "fine_tuned_model": None,
            "organization_id": "org-local",
            "result_files": [],
            "status": "validating_files",
            "training_file": file_id,
            "validation_file": None,
            "hyperparameters": {
                "n_epochs": hyper.get("n_epochs", "auto"),
                "batch_size": hyper.get("batch_size", "auto"),
                "learning_rate_multiplier": hyper.get("learning_rate_multiplier", "auto"),
            },
            "trained_tokens": None,
            "error": None,
            "seed": seed if isinstance(seed, int) else secrets.randbelow(2**31),
            "user_provided_suffix": suffix,
            "estimated_finish": None,
            "integrations": [],
            "metadata": body.get("metadata"),
            "events": [],
        }
        with self.lock:
            _write_json(self._path(job_id), job)
        self._event(job_id, f"Created fine-tuning job: {job_id}")
        self.queue.put(job_id)
        return self.get(job_id)

    def get(self, job_id: str) -> dict[str, Any]:
        job = self._load(job_id)
        job.pop("events")
        return job

    def list(self) -> list[dict[str, Any]]:
        jobs = []
        for path in self.root.glob("*.json"):
            job = _read_json(path)
            job.pop("events", None)
            jobs.append(job)
        return sorted(jobs, key=lambda j: (j["created_at"], j["id"]))

    def events(self, job_id: str, after: str | None, limit: int) -> tuple[list[dict], bool]:
        """Newest first, as OpenAI lists them; ``after`` is the cursor of the previous page."""
        events = list(reversed(self._load(job_id)["events"]))
        if after is not None:
            ids = [e["id"] for e in events]
            events = events[ids.index(after) + 1 :] if after in ids else []
        return events[:limit], len(events) > limit

    def cancel(self, job_id: str) -> dict[str, Any]:
        job = self.get(job_id)
        if job["status"] in TERMINAL:
            raise JobError(400, f"job {job_id} is already {job['status']}", "fine_tuning_job_id")
        self._update(job_id, status="cancelled", finished_at=int(time.time()))
        self._event(job_id, "Fine-tuning job cancelled")
        return self.get(job_id)

    # ------------------------------------------------------------------ the worker
    def _work(self) -> None:
        while (job_id := self.queue.get()) is not None:
            if self.get(job_id)["status"] in TERMINAL:  # cancelled while queued
                continue
            try:
                self._run(job_id)
            except Exception as exc:  # the job fails; the server goes on
                message = f"{type(exc).__name__}: {exc}"
                self._update(
                    job_id,
                    status="failed",
                    finished_at=int(time.time()),
                    error={"code": "training_failed", "message": message, "param": None},
                )
                self._event(job_id, f"Fine-tuning job failed: {message}", level="error")

    def _run(self, job_id: str) -> None:
        job = self.get(job_id)
        data = self.files.content(job["training_file"])
        try:
            texts = training_texts(data, self.speaker)
        except JobError as exc:
            error = {"code": "invalid_training_file", "message": str(exc), "param": exc.param}
            self._update(job_id, status="failed", finished_at=int(time.time()), error=error)
            self._event(job_id, f"Training file is invalid: {exc}", level="error")
            return
        self._event(job_id, f"Files validated: {len(texts)} examples")
        model, meta = load_checkpoint(self.base_checkpoint, device=self.device)
        tok = load_tokenizer(self.workspace / "tokenizer.json")
        work = self.root / job_id
        packed = PackedTokens(work / "train.bin", vocab_size=model.config.vocab_size)
        if len(packed) == 0:  # a rerun after a restart reuses what was packed
            encodings = tok.encode_batch(texts)
            packed.append((i, e.ids) for i, e in enumerate(encodings))
        hyper = job["hyperparameters"]
        epochs = hyper["n_epochs"] if isinstance(hyper["n_epochs"], int) else 3
        batch = hyper["batch_size"] if isinstance(hyper["batch_size"], int) else 8
        lr_mult = hyper["learning_rate_multiplier"]
        lr = 1e-3 * (lr_mult if isinstance(lr_mult, int | float) else 1.0)
        seq_len = model.config.seq_len
        steps = max(1, min(self.max_steps, math.ceil(epochs * len(packed) / (batch * seq_len))))
        hyper = {"n_epochs": epochs, "batch_size": batch, "learning_rate_multiplier": lr / 1e-3}
        self._update(job_id, status="running", hyperparameters=hyper)
        self._event(job_id, f"Fine-tuning job started: {steps} steps on {len(packed)} tokens")
        cfg = TrainSettings(
            steps_per_cycle=steps,
            batch_size=batch,
            seq_len=seq_len,
            lr=lr,
            warmup_steps=min(2, steps - 1),
            device=self.device,
        )

        def log(name: str, value: float, step: int | None) -> None:
            if name == "train_loss" and step is not None:
                self._event(
                    job_id,
                    f"Step {step + 1}/{steps}: training loss={value:.4f}",
                    kind="metrics",
                    data={"step": step + 1, "train_loss": value, "total_steps": steps},
                )
            if self.get(job_id)["status"] == "cancelled":
                raise _Cancelled

        model.set_trainable(None)
        model.train()
        try:
            stats = train(model, packed, steps, cfg, seed=job["seed"], log_metric=log)
        except _Cancelled:
            return
        if self.get(job_id)["status"] == "cancelled":
            return
        suffix = job["user_provided_suffix"] or ""
        model_id = f"ft:{job['model']}:local:{suffix}:{job_id.removeprefix('ftjob-')[:8]}"
        path = self.models / f"{job_id}.safetensors"
        meta = {**meta, "fine_tuned_model": model_id, "fine_tuning_job": job_id,
                "train_loss": stats["train_loss"]}  # fmt: skip
        model.eval()
        with torch.no_grad():
            save_checkpoint(path, model, meta)
        self._update(
            job_id,
            status="succeeded",
            fine_tuned_model=model_id,
            finished_at=int(time.time()),
            trained_tokens=int(stats["tokens"]),
        )
        self.on_model(model_id, path)
        self._event(job_id, f"New fine-tuned model created: {model_id}")
        self._event(job_id, "The job has successfully completed")

    # ------------------------------------------------------------------ storage
    def _path(self, job_id: str) -> Path:
        return self.root / f"{job_id}.json"

    def _load(self, job_id: str) -> dict[str, Any]:
        path = self._path(job_id)
        if "/" in job_id or not path.exists():
            raise JobError(404, f"No such fine-tuning job: {job_id}", "fine_tuning_job_id")
        with self.lock:
            return _read_json(path)

    def _update(self, job_id: str, **values: Any) -> None:
        with self.lock:
            job = _read_json(self._path(job_id))
            if job["status"] == "cancelled" and values.get("status") not in (None, "cancelled"):
                return  # a cancel wins over the worker's later updates
            job.update(values)
            _write_json(self._path(job_id), job)

    def _event(
        self,
        job_id: str,
        message: str,
        level: str = "info",
        kind: str = "message",
        data: dict[str, Any] | None = None,
    ) -> None:
        with self.lock:
            job = _read_json(self._path(job_id))
            job["events"].append(
                {
                    "id": f"ftevent-{job_id[6:14]}-{len(job['events']):05d}",
                    "object": "fine_tuning.job.event",
                    "created_at": int(time.time()),
                    "level": level,
                    "message": message,
                    "data": data or {},
                    "type": kind,
                }
            )
            _write_json(self._path(job_id), job)


class _Cancelled(Exception):
    pass
