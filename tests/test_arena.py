import json
import tomllib
from pathlib import Path

from click.testing import CliRunner

from dte_aar.arena import chunk_code, chunk_prose, heldout, load_arena, read_examples, resolve
from dte_aar.cli import cli
from dte_aar.store import Store


def test_default_arena_meets_its_brief() -> None:
    arena = load_arena("deep_tree_echo")
    assert not arena.issues, arena.issues
    assert len(arena.seed) >= 120
    assert sum(len(e.text.encode()) for e in arena.seed) >= 150_000
    kinds = {e.kind for e in arena.seed}
    assert kinds == {"chat", "text", "code"}
    assert len(arena.prompts) >= 100 and len(set(arena.prompts)) == len(arena.prompts)
    assert len(arena.probes) >= 30
    assert {p.kind for p in arena.probes} == {"completion", "concept", "self"}
    for phrase in ("I", "my", "Deep Tree Echo", "reservoir", "membrane"):
        assert phrase in arena.identity.self_reference
    identity = tomllib.loads((resolve("deep_tree_echo") / "identity.toml").read_text())
    assert len(identity["concepts"]) >= 6


def test_default_arena_probes_never_appear_in_the_seed() -> None:
    arena = load_arena("deep_tree_echo")
    seed = "\n".join(e.text for e in arena.seed)
    for probe in arena.probes:
        if probe.kind != "completion":
            assert probe.prompt not in seed, probe.id
            assert probe.reference not in seed, probe.id


def test_chat_jsonl_is_rendered_and_bad_lines_reported(tmp_path: Path) -> None:
    good = {
        "messages": [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "Me."}]
    }
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({"messages": [{"role": "robot", "content": "x"}]}),
        json.dumps({"messages": [{"role": "user", "content": "no answer"}]}),
        "",
        json.dumps({"prompt": "old format"}),
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(lines) + "\n")
    examples, issues = read_examples(path, "Deep Tree Echo")
    assert [e.text for e in examples] == ["User: Who?\nDeep Tree Echo: Me."]
    assert [i.line for i in issues] == [2, 3, 4, 6]
    assert str(issues[0]).startswith(f"{path}:2: invalid JSON")
    assert "messages[0].role" in str(issues[1])
    assert "no assistant message" in str(issues[2])


def test_non_utf8_is_reported_not_crashed(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café au lait, a paragraph long enough to count".encode("latin-1"))
    examples, issues = read_examples(bad, "X")
    assert examples == [] and "not UTF-8" in str(issues[0])
    mixed = tmp_path / "mixed.jsonl"
    good = '{"messages": [{"role": "assistant", "content": "fine line here"}]}'
    mixed.write_bytes(good.encode() + b"\n\xff\xfe broken\n")
    examples, issues = read_examples(mixed, "X")
    assert len(examples) == 1 and f"{mixed}:2: not UTF-8" in str(issues[0])


def test_chunking_respects_limits_and_boundaries() -> None:
    prose = "\n\n".join(f"Paragraph {i} " + "word " * 60 for i in range(30))
    chunks = chunk_prose(prose, limit=1000)
    assert all(len(c) <= 1000 for c in chunks) and len(chunks) > 5
    assert "".join(chunks).count("Paragraph") == 30  # nothing lost
    code = "\n\n".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(50))
    pieces = chunk_code(code, limit=300)
    assert all(p.startswith("def ") for p in pieces)  # cut between definitions
    assert sum(p.count("def ") for p in pieces) == 50


def test_heldout_split_is_stable_and_near_the_fraction() -> None:
    picks = [heldout(f"file#{i}", 7, 0.1) for i in range(2000)]
    assert picks == [heldout(f"file#{i}", 7, 0.1) for i in range(2000)]
    assert 0.07 < sum(picks) / 2000 < 0.13


def test_import_cli_reports_skips_and_dedups(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.md").write_text("# Notes\n\nA first paragraph about reservoirs and echoes.\n")
    (docs / "code.py").write_text("def echo(x):\n    return x\n\n\ndef ripple(y):\n    return y\n")
    (docs / "chat.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "hi"}, '
        '{"role": "assistant", "content": "hello"}]}\noops\n'
    )
    (docs / "bad.txt").write_bytes(b"\xff\xfe\xfa not text")
    runner = CliRunner()
    result = runner.invoke(cli, ["arena", "import", str(docs), "-w", str(ws), "--strict"])
    assert result.exit_code == 2
    assert "import refused" in result.output and not (ws / "dte.db").exists()
    result = runner.invoke(cli, ["arena", "import", str(docs), "-w", str(ws)])
    assert result.exit_code == 0, result.output
    assert f"{docs / 'chat.jsonl'}:2: invalid JSON" in result.output
    assert "bad.txt: not UTF-8" in result.output
    assert "imported 3 examples" in result.output
    again = runner.invoke(cli, ["arena", "import", str(docs), "-w", str(ws)])
    assert "imported 0 examples" in again.output and "3 duplicates skipped" in again.output
    with Store.open(ws, readonly=True) as store:
        assert store.corpus_counts() == {"import:accepted": 3}


def test_check_and_show(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["arena", "check", "deep_tree_echo"])
    assert result.exit_code == 0 and "ok:" in result.output
    broken = tmp_path / "arena"
    (broken / "seed").mkdir(parents=True)
    (broken / "identity.toml").write_text('name = "X"\nself_reference = []\n')
    result = runner.invoke(cli, ["arena", "check", str(broken)])
    assert result.exit_code == 1
    assert "identity.toml: self_reference: List should have at least 1 item" in result.output
    result = runner.invoke(cli, ["arena", "show", "-w", str(tmp_path / "ws")])
    assert result.exit_code == 0, result.output
    assert "seed/essays" in result.output and "total" in result.output
