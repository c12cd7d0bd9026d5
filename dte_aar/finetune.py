"""`dte finetune`: the seed's hybrid first step, an OpenAI fine-tune on the arena's seed.

export -> validate -> estimate (shown before anything is spent) -> upload -> create the job
-> poll -> record. The seed's train split becomes chat fine-tuning JSONL: chat examples as
they were written, prose and code as the persona's answer to a short request. Held-out
examples never leave, so evaluation stays honest. Token counts are estimates (about four
characters per token plus OpenAI's per-message overhead): the exact tokenizer is not
shipped offline, so the estimated cost is marked as such.

Everything is recorded in SQLite (``finetune_jobs``, ``finetune_events``, and ``events``),
keyed by the base URL (credentials stripped), so a rerun resumes instead of paying twice:
it polls the job still running for the same training file, reuses an uploaded file, and
adopts a job the server already has for that file. When a job succeeds, its model becomes
the `openai` generator's default for that base URL (``finetuned_model``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click
import sqlite_utils

from dte_aar.arena import Arena, heldout
from dte_aar.cli_options import workspace_option

FINETUNE_MODEL = "gpt-4o-mini-2024-07-18"
OPENAI_BASE_URL = "https://api.openai.com/v1"
MIN_EXAMPLES = 10
MAX_EXAMPLE_TOKENS = 65_536  # OpenAI's per-example limit for gpt-4o-mini
TRAINING_PRICES = {"gpt-4o-mini-2024-07-18": 3.00, "gpt-4.1-mini-2025-04-14": 5.00}  # $/1M
DEFAULT_EPOCHS = 3
TERMINAL = ("succeeded", "failed", "cancelled")


class FinetuneError(Exception):
    """One line for the user: what is wrong and where."""


# ---------------------------------------------------------------------- export
@dataclass(frozen=True)
class Export:
    records: list[dict[str, Any]]
    tokens: list[int]  # estimated tokens per example

    @property
    def jsonl(self) -> bytes:
        lines = (json.dumps(r, ensure_ascii=False, sort_keys=True) for r in self.records)
        return ("\n".join(lines) + "\n").encode("utf-8")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.jsonl).hexdigest()


def export_seed(arena: Arena, seed: int, heldout_fraction: float) -> Export:
    """The arena's seed (train split) as chat fine-tuning records."""
    persona = f"You are {arena.identity.name}. {arena.identity.summary}".strip()
    records = []
    for example in arena.seed:
        if heldout(example.origin, seed, heldout_fraction):
            continue
        if example.kind == "chat":
            records.append(_chat_record(arena.path, example.origin))
            continue
        records.append(
            {
                "messages": [
                    {"role": "system", "content": persona},
                    {"role": "user", "content": _request_for(example.text, example.kind)},
                    {"role": "assistant", "content": example.text},
                ]
            }
        )
    return Export(records, [estimate_tokens(r) for r in records])


def _chat_record(root: Path, origin: str) -> dict[str, Any]:
    """The original JSONL line behind a chat example (``file#line``)."""
    name, _, line = origin.rpartition("#")
    text = (root / name).read_text(encoding="utf-8").splitlines()[int(line) - 1]
    record = json.loads(text)
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in record["messages"]]}


def _request_for(text: str, kind: str) -> str:
    """The user turn a prose or code example answers."""
    if kind == "code":
        return "Show me a piece of code that says something about how you work, with comments."
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    if first.startswith("#"):
        return f"Write about \u201c{first.lstrip('#').strip()}\u201d in your own voice."
    return "Write a passage in your own voice."


def estimate_tokens(record: dict[str, Any]) -> int:
    """About four characters per token, plus 4 per message and 3 to prime the reply."""
    messages = record.get("messages", [])
    chars = sum(len(str(m.get("content", ""))) for m in messages)
    return math.ceil(chars / 4) + 4 * len(messages) + 3


def validate(export: Export) -> list[str]:
    """Problems that would make OpenAI reject the file, one line each (empty: fine)."""
    problems = []
    for i, record in enumerate(export.records, start=1):
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages:
            problems.append(f"example {i}: no messages")
            continue
        for j, m in enumerate(messages):
            if m.get("role") not in ("system", "user", "assistant"):
                problems.append(f"example {i}: messages[{j}].role {m.get('role')!r} is invalid")
            if not isinstance(m.get("content"), str) or not m["content"].strip():
                problems.append(f"example {i}: messages[{j}].content is empty")
        if messages[-1].get("role") != "assistant":
            problems.append(f"example {i}: the last message must be the assistant's")
        if export.tokens[i - 1] > MAX_EXAMPLE_TOKENS:
            problems.append(f"example {i}: ~{export.tokens[i - 1]} tokens, over the limit")
    if len(export.records) < MIN_EXAMPLES:
        problems.append(f"{len(export.records)} examples; OpenAI needs at least {MIN_EXAMPLES}")
    return problems


def estimated_cost(tokens: int, epochs: int, model: str) -> float | None:
    price = TRAINING_PRICES.get(model)
    return None if price is None else tokens * epochs * price / 1e6


# ---------------------------------------------------------------------- records
def public_url(url: str) -> str:
    """``url`` without credentials or a trailing slash: what is stored and compared."""
    parts = urlsplit(url.rstrip("/"))
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def finetuned_model(db: sqlite_utils.Database, base_url: str) -> str | None:
    """The model of the last fine-tune that succeeded at ``base_url``, if any."""
    if not db["finetune_jobs"].exists():
        return None
    row = db.execute(
        "select fine_tuned_model from finetune_jobs where status = 'succeeded' "
        "and base_url = ? and fine_tuned_model is not null order by id desc limit 1",
        [public_url(base_url)],
    ).fetchone()
    return row[0] if row else None


def _now() -> str:
    from dte_aar.store import now

    return now()


# ---------------------------------------------------------------------- the job
def run_finetune(
    store: Any,
    client: Any,
    export: Export,
    base_url: str,
    model: str = FINETUNE_MODEL,
    epochs: int | None = None,
    suffix: str | None = None,
    poll_interval: float = 10.0,
    wait: bool = True,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Upload, create (or resume) the job, poll it to the end; return its finetune_jobs row."""
    db = store.db
    url = public_url(base_url)
    table = db["finetune_jobs"]
    rows = list(
        table.rows_where(
            "base_url = ? and training_sha256 = ? and model = ? and status not in (?, ?, ?)",
            [url, export.sha256, model, *TERMINAL],
            order_by="id desc",
            limit=1,
        )
    )
    if rows:
        row = rows[0]
        say(f"resuming fine-tune {row['job_id'] or '(not created yet)'} ({row['status']})")
    else:
        tokens = sum(export.tokens)
        with db.conn:
            table.insert(
                {
                    "base_url": url,
                    "model": model,
                    "training_sha256": export.sha256,
                    "status": "exported",
                    "examples": len(export.records),
                    "tokens": tokens,
                    "estimated_cost": estimated_cost(tokens, epochs or DEFAULT_EPOCHS, model),
                    "created_at": _now(),
                    "updated_at": _now(),
                }
            )
        row = table.get(table.last_pk)

    def update(**values: Any) -> None:
        with db.conn:
            table.update(row["id"], {**values, "updated_at": _now()})
        row.update(values)

    if not row["training_file_id"]:
        uploaded = client.files.create(file=("dte-seed.jsonl", export.jsonl), purpose="fine-tune")
        update(training_file_id=uploaded.id, status="uploaded")
        say(f"uploaded {len(export.records)} examples as {uploaded.id}")
    if not row["job_id"]:
        job = _adopt(client, row["training_file_id"], model)
        if job is None:
            hyper = {"n_epochs": epochs} if epochs else None
            job = client.fine_tuning.jobs.create(
                model=model,
                training_file=row["training_file_id"],
                suffix=suffix,
                **({"hyperparameters": hyper} if hyper else {}),
            )
            say(f"created fine-tuning job {job.id} on {model}")
        else:
            say(f"found job {job.id} ({job.status}) for this file; following it")
        update(job_id=job.id, status=job.status)
        store.add_event("finetune_created", data={"job_id": job.id, "model": model})
    return poll(store, client, row, update, poll_interval, wait, say)


def _adopt(client: Any, file_id: str, model: str) -> Any:
    """A job the server already has for ``file_id`` (a crash right after create), running
    or succeeded: following it costs nothing, starting another would pay twice."""
    for job in client.fine_tuning.jobs.list(limit=100).data:  # the newest page is enough
        same = job.training_file == file_id and job.model == model
        if same and job.status not in ("failed", "cancelled"):
            return job
    return None


def poll(
    store: Any,
    client: Any,
    row: dict[str, Any],
    update: Callable[..., None],
    interval: float,
    wait: bool,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Record the job's events and status until it ends (or once, without ``wait``)."""
    db = store.db
    job_id = row["job_id"]
    known = {
        r[0] for r in db.execute("select event_id from finetune_events where job_id = ?", [job_id])
    }
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        fresh = []
        for event in client.fine_tuning.jobs.list_events(job_id, limit=100):  # newest first
            if event.id in known:  # pages are fetched only as far as what is new
                break
            fresh.append(event)
        for event in reversed(fresh):
            data = getattr(event, "data", None)
            with db.conn:
                db["finetune_events"].insert(
                    {
                        "job_id": job_id,
                        "event_id": event.id,
                        "created_at": event.created_at,
                        "level": event.level,
                        "type": getattr(event, "type", None),
                        "message": event.message,
                        "data": json.dumps(data if isinstance(data, dict) else {}, default=str),
                    },
                    ignore=True,
                )
            known.add(event.id)
            say(f"  {event.message}")
        if job.status != row["status"]:
            store.add_event("finetune_status", data={"job_id": job_id, "status": job.status})
        error = job.error.message if getattr(job, "error", None) else None
        update(status=job.status, fine_tuned_model=job.fine_tuned_model, error=error)
        if job.status in TERMINAL or not wait:
            break
        time.sleep(interval)
    if row["status"] == "succeeded":
        store.add_event(
            "finetune_succeeded", data={"job_id": job_id, "model": row["fine_tuned_model"]}
        )
    return row


# ---------------------------------------------------------------------- the command
@click.command("finetune")
@workspace_option()
@click.option("--base-url", envvar="OPENAI_BASE_URL", help="API root (default: OpenAI's).")
@click.option("--model", default=FINETUNE_MODEL, show_default=True, help="Base model.")
@click.option("--epochs", type=click.IntRange(1, 50), help="n_epochs (default: OpenAI's auto).")
@click.option("--suffix", default="dte", show_default=True, help="Fine-tuned model suffix.")
@click.option(
    "--export",
    "export_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the JSONL here.",
)
@click.option("--dry-run", is_flag=True, help="Export, validate and estimate only.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before spending.")
@click.option("--no-wait", is_flag=True, help="Start (or check) the job and return.")
@click.option("--poll-interval", type=float, default=10.0, show_default=True)
def finetune_command(
    workspace: Path,
    base_url: str | None,
    model: str,
    epochs: int | None,
    suffix: str,
    export_path: Path | None,
    dry_run: bool,
    yes: bool,
    no_wait: bool,
    poll_interval: float,
) -> None:
    """Fine-tune gpt-4o-mini on the arena's seed; its model becomes the openai default."""
    import openai

    from dte_aar.arena import ArenaError, load_arena
    from dte_aar.config import ConfigError, load_settings
    from dte_aar.store import Store

    try:
        settings = load_settings(workspace)
        arena = load_arena(settings.arena)
    except (ConfigError, ArenaError) as exc:
        raise click.ClickException(str(exc)) from None
    export = export_seed(arena, settings.seed, settings.heldout_fraction)
    problems = validate(export)
    tokens = sum(export.tokens)
    cost = estimated_cost(tokens, epochs or DEFAULT_EPOCHS, model)
    click.echo(
        f"seed export: {len(export.records)} examples, ~{tokens:,} tokens per epoch "
        f"(largest ~{max(export.tokens, default=0):,})"
    )
    shown = f"~${cost:.2f}" if cost is not None else "unknown (no price for this model)"
    click.echo(f"estimated training cost for {epochs or DEFAULT_EPOCHS} epochs on {model}: {shown}")
    if export_path is not None:
        export_path.write_bytes(export.jsonl)
        click.echo(f"wrote {export_path}")
    for problem in problems:
        click.echo(f"invalid: {problem}", err=True)
    if problems:
        raise click.ClickException(f"the export is not valid ({len(problems)} problem(s))")
    if dry_run:
        return
    url = base_url or OPENAI_BASE_URL
    key = os.environ.get("OPENAI_API_KEY")
    if not key and public_url(url) == OPENAI_BASE_URL:
        raise click.ClickException("OPENAI_API_KEY is not set")
    if not yes and not click.confirm(f"start fine-tuning at {public_url(url)}?", default=False):
        raise click.Abort()
    client = openai.OpenAI(api_key=key or "no-key", base_url=url, max_retries=5)
    workspace.mkdir(parents=True, exist_ok=True)
    with Store.open(workspace) as store:
        try:
            row = run_finetune(
                store,
                client,
                export,
                url,
                model,
                epochs,
                suffix,
                poll_interval,
                wait=not no_wait,
                say=click.echo,
            )
        except openai.AuthenticationError:
            raise click.ClickException("authentication failed: check OPENAI_API_KEY") from None
        except openai.APIError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc.message}") from None
    if row["status"] == "succeeded":
        click.echo(
            f"fine-tuned model: {row['fine_tuned_model']} (now the openai generator's default "
            f"for {public_url(url)}; [plugins.openai].model overrides it)"
        )
    elif row["status"] in TERMINAL:
        raise click.ClickException(f"job {row['job_id']} {row['status']}: {row['error'] or ''}")
    else:
        click.echo(f"job {row['job_id']} is {row['status']}: run `dte finetune` again to follow")
