"""`dte finetune` end to end against `dte serve`'s local fine-tuning: the seed export and
its validation, upload, job, events and model recorded in SQLite, the model served and made
the `openai` generator's default, and a rerun that resumes instead of paying twice."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest
from click.testing import CliRunner
from tiny_workspace import tiny_workspace

from dte_aar.arena import heldout, load_arena
from dte_aar.config import load_settings
from dte_aar.finetune import (
    Export,
    estimate_tokens,
    export_seed,
    finetune_command,
    finetuned_model,
    public_url,
    validate,
)
from dte_aar.hookspecs import CycleContext, GenerationRequest
from dte_aar.progress import NullProgress
from dte_aar.serve import ServeLimits, create_app, running_server
from dte_aar.serve_jobs import training_texts
from dte_aar.store import Store
from dte_aar_plugins.openai_gen import OpenAIGenerator

KEY = "sk-finetune-test"


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_workspace(tmp_path_factory.mktemp("finetune") / "ws")


@pytest.fixture(scope="module")
def url(ws: Path):
    app = create_app(ws, api_key=KEY, limits=ServeLimits(finetune_max_steps=3))
    with running_server(app) as base:
        yield base


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def export(ws: Path) -> Export:
    settings = load_settings(ws)
    return export_seed(load_arena(settings.arena), settings.seed, settings.heldout_fraction)


def run(ws: Path, url: str, *args: str) -> object:
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": ""}
    base = ["-w", str(ws), "--base-url", url, "--poll-interval", "0.05"]
    return CliRunner().invoke(finetune_command, [*base, *args], env=env, catch_exceptions=False)


def test_export_is_the_train_split_as_valid_chat(ws: Path, export: Export) -> None:
    settings = load_settings(ws)
    arena = load_arena(settings.arena)
    kept = [
        e for e in arena.seed if not heldout(e.origin, settings.seed, settings.heldout_fraction)
    ]
    assert len(export.records) == len(kept) < len(arena.seed)
    assert validate(export) == []
    for record in export.records:
        roles = [m["role"] for m in record["messages"]]
        assert roles[-1] == "assistant" and set(roles) <= {"system", "user", "assistant"}
    chat = next(e for e in kept if e.kind == "chat")
    name, _, line = chat.origin.rpartition("#")
    original = json.loads((arena.path / name).read_text().splitlines()[int(line) - 1])
    assert original in export.records  # chat examples go out exactly as written
    prose = [r for r in export.records if r["messages"][-1]["content"].startswith("#")]
    assert prose and prose[0]["messages"][1]["content"].startswith("Write about")
    assert export.tokens == [estimate_tokens(r) for r in export.records]
    lines = export.jsonl.decode().splitlines()
    assert [json.loads(x) for x in lines] == export.records
    assert training_texts(export.jsonl, "Deep Tree Echo")[0].startswith("System: You are")


def test_validation_names_each_problem() -> None:
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "o"}]}
    bad = [
        {"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "assistant", "content": "y"}, {"role": "user", "content": "x"}]},
        {"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "y"}]},
    ]
    records = [good] * 5 + bad
    problems = validate(Export(records, [estimate_tokens(r) for r in records]))
    assert problems == [
        "example 6: messages[0].role 'tool' is invalid",
        "example 7: the last message must be the assistant's",
        "example 8: messages[0].content is empty",
        "8 examples; OpenAI needs at least 10",
    ]


def test_dry_run_shows_the_estimate_and_spends_nothing(ws: Path, tmp_path: Path) -> None:
    out = tmp_path / "seed.jsonl"
    result = CliRunner().invoke(
        finetune_command, ["-w", str(ws), "--dry-run", "--export", str(out)], env={}
    )
    assert result.exit_code == 0, result.output
    assert "examples, ~" in result.output and "estimated training cost" in result.output
    assert "$" in result.output and out.read_bytes().count(b"\n") > 10
    with Store.open(ws, readonly=True) as store:
        assert store.db["finetune_jobs"].count == 0  # nothing recorded


def test_finetune_end_to_end_against_dte_serve(ws, url, client, export, monkeypatch) -> None:
    result = run(ws, url, "--yes", "--epochs", "1")
    assert result.exit_code == 0, result.output
    text = result.output
    assert text.index("estimated training cost") < text.index("uploaded") < text.index("created")
    with Store.open(ws, readonly=True) as store:
        row = next(store.db["finetune_jobs"].rows_where(order_by="id desc"))
        events = list(store.db["finetune_events"].rows_where("job_id = ?", [row["job_id"]]))
        kinds = [k for (k,) in store.db.execute("select kind from events where kind like 'fine%'")]
        default = finetuned_model(store.db, url)
    model = row["fine_tuned_model"]
    assert row["status"] == "succeeded" and model.startswith("ft:gpt-4o-mini-2024-07-18:local:dte:")
    assert row["base_url"] == public_url(url) and row["training_sha256"] == export.sha256
    assert row["examples"] == len(export.records) and row["estimated_cost"] > 0
    messages = [e["message"] for e in events]
    paged = [e.id for e in client.fine_tuning.jobs.list_events(row["job_id"], limit=2)]
    assert paged == [e["event_id"] for e in events][::-1]  # newest first, page by page
    assert "Step 1/3: training loss=" in " ".join(messages)
    assert any("successfully completed" in m for m in messages)
    assert {"finetune_created", "finetune_succeeded"} <= set(kinds)
    assert default == model and f"fine-tuned model: {model}" in text
    # The server serves the new model, and the openai generator now defaults to it.
    assert model in [m.id for m in client.models.list()]
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5, seed=1
    )
    assert reply.model == model and reply.usage.completion_tokens > 0
    with Store.open(ws) as store:
        settings = load_settings(ws)
        ctx = CycleContext(
            run_id=1,
            cycle=5,
            settings=settings,
            workspace=ws,
            arena=load_arena(settings.arena),
            store=store,
            checkpoint=None,
            progress=NullProgress(),
            log_metric=lambda *a: None,
            plugin_config=lambda name: {"base_url": url, "max_tokens": 4},
        )
        request = GenerationRequest(slot=0, prompt="hello", style_example=None, seed=3)
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        (candidate,) = OpenAIGenerator().generate([request], ctx)
    assert candidate.model == model and candidate.cost > 0  # priced as a gpt-4o-mini fine-tune


def test_a_rerun_adopts_the_job_instead_of_paying_twice(ws, url, client, export) -> None:
    """A first run that crashed right after creating the job: the file is recorded, the
    job id is not. The rerun finds the server's job for that file and follows it."""
    uploaded = client.files.create(file=("seed.jsonl", export.jsonl), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini-2024-07-18", training_file=uploaded.id, suffix="again"
    )
    with Store.open(ws) as store:
        store.db["finetune_jobs"].insert(
            {
                "base_url": public_url(url),
                "model": "gpt-4o-mini-2024-07-18",
                "training_sha256": export.sha256,
                "training_file_id": uploaded.id,
                "status": "uploaded",
                "created_at": "x",
                "updated_at": "x",
            }
        )
    files_before = len(client.files.list().data)
    jobs_before = len(client.fine_tuning.jobs.list().data)
    result = run(ws, url, "--yes")
    assert result.exit_code == 0, result.output
    assert f"found job {job.id}" in result.output and "examples as file-" not in result.output
    assert len(client.files.list().data) == files_before
    assert len(client.fine_tuning.jobs.list().data) == jobs_before
    with Store.open(ws, readonly=True) as store:
        row = next(store.db["finetune_jobs"].rows_where(order_by="id desc"))
    assert row["job_id"] == job.id and row["status"] == "succeeded"
    assert row["fine_tuned_model"].startswith("ft:gpt-4o-mini-2024-07-18:local:again:")


def test_a_rerun_follows_a_recorded_running_job(ws, url, client, export) -> None:
    uploaded = client.files.create(file=("seed.jsonl", export.jsonl), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file=uploaded.id)
    with Store.open(ws) as store:
        store.db["finetune_jobs"].insert(
            {
                "base_url": public_url(url),
                "model": "gpt-4o-mini-2024-07-18",
                "training_sha256": export.sha256,
                "training_file_id": uploaded.id,
                "job_id": job.id,
                "status": "running",
                "created_at": "x",
                "updated_at": "x",
            }
        )
    jobs_before = len(client.fine_tuning.jobs.list().data)
    result = run(ws, url, "--yes")
    assert result.exit_code == 0, result.output
    assert f"resuming fine-tune {job.id}" in result.output
    assert len(client.fine_tuning.jobs.list().data) == jobs_before
    with Store.open(ws, readonly=True) as store:
        assert (
            finetuned_model(store.db, url)
            == client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
        )


def test_local_jobs_reject_a_bad_training_file(client) -> None:
    uploaded = client.files.create(file=("bad.jsonl", b'{"messages": []}\n'), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file=uploaded.id)
    deadline = time.monotonic() + 20
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("failed", "succeeded"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job.status == "failed" and "line 1" in job.error.message
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file="file-nope")


def test_public_url_strips_credentials() -> None:
    assert public_url("https://user:secret@example.com:8443/v1/") == "https://example.com:8443/v1"
    assert public_url("http://127.0.0.1:9/v1") == "http://127.0.0.1:9/v1"
