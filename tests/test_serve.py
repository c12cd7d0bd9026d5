"""`dte serve` through the real `openai` client on loopback: models, chat (plain and
streamed), completions, seeds, stop strings, auth, limits and OpenAI-shaped errors."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from tiny_workspace import tiny_workspace

from dte_aar.serve import ServeLimits, create_app, parse_multipart, running_server

KEY = "test-serve-key"
HI = [{"role": "user", "content": "Tell me about your reservoir."}]


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_workspace(tmp_path_factory.mktemp("serve") / "ws")


@pytest.fixture(scope="module")
def app(ws: Path):
    limits = ServeLimits(max_tokens=64, max_body_bytes=4096, max_concurrent=2, max_n=3)
    return create_app(ws, api_key=KEY, limits=limits)


@pytest.fixture(scope="module")
def url(app):
    with running_server(app) as base:
        yield base


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)


def test_models_lists_the_checkpoint(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["dte-cycle-0000"]
    assert client.models.retrieve("dte").id == "dte-cycle-0000"  # the alias


def test_chat_is_seeded_and_reports_usage(client: openai.OpenAI) -> None:
    a = client.chat.completions.create(model="dte", messages=HI, max_tokens=12, seed=5)
    b = client.chat.completions.create(model="dte-cycle-0000", messages=HI, max_tokens=12, seed=5)
    c = client.chat.completions.create(model="dte", messages=HI, max_tokens=12, seed=6)
    assert a.object == "chat.completion" and a.model == "dte-cycle-0000"
    assert a.choices[0].message.role == "assistant"
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].message.content != c.choices[0].message.content
    assert a.choices[0].finish_reason in ("stop", "length")
    assert 0 < a.usage.completion_tokens <= 12 and a.usage.prompt_tokens > 5
    assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens


def test_streamed_chat_matches_the_plain_reply(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="dte", messages=HI, max_tokens=20, seed=9)
    stream = client.chat.completions.create(
        model="dte",
        messages=HI,
        max_tokens=20,
        seed=9,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == plain.choices[0].finish_reason and set(finals[:-1]) == {None}
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_stream_is_server_sent_events_ending_in_done(url: str) -> None:
    body = {"model": "dte", "messages": HI, "max_tokens": 5, "stream": True, "seed": 1}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", f"{url}/chat/completions", json=body, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_completions_with_several_prompts_and_choices(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model="dte", prompt=["The tree", "An echo"], max_tokens=6, n=2, seed=3, temperature=0.8
    )
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text != r.choices[1].text  # seed + i per choice
    again = client.completions.create(
        model="dte", prompt="The tree", max_tokens=6, n=2, seed=3, temperature=0.8
    )
    assert [c.text for c in again.choices] == [c.text for c in r.choices[:2]]
    streamed = client.completions.create(
        model="dte", prompt="The tree", max_tokens=6, seed=3, temperature=0.8, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == r.choices[0].text


def test_greedy_and_stop_strings(client: openai.OpenAI) -> None:
    full = client.completions.create(model="dte", prompt="The tree", max_tokens=30, temperature=0)
    text = full.choices[0].text
    assert (
        text
        == client.completions.create(
            model="dte", prompt="The tree", max_tokens=30, temperature=0, seed=99
        )
        .choices[0]
        .text
    )  # greedy ignores the seed
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    if not stop.strip() or "\ufffd" in stop:
        pytest.skip("the greedy text has no usable stop string")
    cut = client.completions.create(
        model="dte", prompt="The tree", max_tokens=30, temperature=0, stop=[stop]
    )
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_auth_is_required_and_never_echoed(url: str) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        openai.OpenAI(base_url=url, api_key="wrong-key", max_retries=0).models.list()
    assert info.value.status_code == 401
    assert "wrong-key" not in str(info.value.body)
    assert info.value.body["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/models").status_code == 401


def test_bad_requests_are_openai_shaped_4xx(client: openai.OpenAI, url: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-nope", messages=HI)
    assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="dte", messages=HI, max_tokens=65)
    assert info.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="dte", messages=[])
    assert info.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="dte", messages=[{"role": "tool", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="dte", messages=HI, n=4)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="dte", messages=HI, temperature=3)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.post(f"{url}/chat/completions", content=b"{not json", headers=headers)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    big = [{"role": "user", "content": "x" * 5000}]
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="dte", messages=big)
    assert info.value.status_code == 413 and info.value.body["code"] == "body_too_large"
    r = httpx.get(f"{url}/nowhere", headers=headers)
    assert r.status_code == 404 and "error" in r.json()


def test_a_server_fault_is_an_openai_shaped_500(app, client: openai.OpenAI, tmp_path) -> None:
    app.state.registry.add("broken", tmp_path / "missing.safetensors")
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="broken", messages=HI, max_tokens=2)
    assert info.value.body["type"] == "server_error"
    assert client.chat.completions.create(model="dte", messages=HI, max_tokens=2).choices


def test_concurrent_requests_over_the_limit_get_429(client: openai.OpenAI, url: str) -> None:
    """Two slow streams hold both slots; a third request is refused, and the event loop
    still answers other routes while the model works."""
    streams = [
        client.chat.completions.create(
            model="dte", messages=HI, max_tokens=64, stream=True, temperature=1.0, seed=i
        )
        for i in range(2)
    ]
    first = [next(iter(s)) for s in streams]  # both are running now
    assert all(c.choices[0].delta.role == "assistant" for c in first)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="dte", messages=HI, max_tokens=4)
    assert info.value.body["code"] == "rate_limit_exceeded"
    started = time.perf_counter()
    assert client.models.list().data  # not blocked by the generations
    assert time.perf_counter() - started < 2
    for s in streams:
        s.close()
    deadline = time.monotonic() + 10  # the slots come back once the streams end
    while True:
        try:
            client.chat.completions.create(model="dte", messages=HI, max_tokens=2)
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_concurrent_clients_get_their_own_seeded_replies(url: str) -> None:
    expected = {}
    client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=5)
    for seed in (1, 2):
        r = client.chat.completions.create(model="dte", messages=HI, max_tokens=10, seed=seed)
        expected[seed] = r.choices[0].message.content
    got: dict[int, str | None] = {}

    def ask(seed: int) -> None:
        r = client.chat.completions.create(model="dte", messages=HI, max_tokens=10, seed=seed)
        got[seed] = r.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected


def test_multipart_parser_keeps_bytes_exact() -> None:
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
        b'Content-Type: application/octet-stream\r\n\r\n{"a": 1}\n{"b": "\xc3\xa9"}\r\n\r\n'
        b"--XyZ--\r\n"
    )
    fields = parse_multipart(body, "multipart/form-data; boundary=XyZ")
    assert fields["purpose"] == (None, b"fine-tune")
    assert fields["file"] == ("a.jsonl", b'{"a": 1}\n{"b": "\xc3\xa9"}\r\n')


def test_serve_refuses_a_workspace_without_checkpoint(tmp_path: Path) -> None:
    from dte_aar.store import Store

    Store.open(tmp_path).close()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        create_app(tmp_path)
