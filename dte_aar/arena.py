"""Arenas: load and validate them, and turn user files into corpus examples.

An arena is a directory::

    identity.toml   name, summary, self_reference phrases, [[concepts]]
    seed/           the seed corpus: .jsonl (OpenAI chat fine-tuning lines), .md/.txt, code
    prompts.txt     generation prompts, one per line ('#' starts a comment)
    probes.jsonl    held-out probes {id, kind, prompt, reference}; training never sees them

The same readers serve ``dte arena import``: every problem is an :class:`ArenaIssue`
(``file:line: reason``) that is either skipped or, in strict mode, refuses the whole import.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}
CHAT_SUFFIXES = {".jsonl"}
CODE_SUFFIXES = {
    ".py", ".scm", ".ss", ".lisp", ".el", ".clj", ".js", ".ts", ".c", ".h", ".cpp", ".rs",
    ".go", ".java", ".rb", ".sh", ".lua", ".hs", ".ml", ".toml", ".yaml", ".yml",
}  # fmt: skip
MAX_CHUNK_CHARS = 2400
MIN_CHUNK_CHARS = 24


class ArenaError(Exception):
    """An arena that cannot be used; the message is one line naming the file."""


@dataclass(frozen=True)
class ArenaIssue:
    path: Path
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class Example:
    """One corpus example: text plus where it came from (``file#chunk``)."""

    text: str
    origin: str
    kind: Literal["chat", "text", "code"]


class Concept(BaseModel):
    model_config = {"extra": "forbid"}
    name: str = Field(min_length=1)
    keywords: list[str] = Field(min_length=1)
    description: str = ""


class Identity(BaseModel):
    model_config = {"extra": "forbid"}
    name: str = Field(min_length=1)
    summary: str = ""
    self_reference: list[str] = Field(min_length=1)
    concepts: list[Concept] = Field(default_factory=list)


class Probe(BaseModel):
    model_config = {"extra": "forbid"}
    id: str = Field(min_length=1)
    kind: Literal["completion", "concept", "self"]
    prompt: str = Field(min_length=1)
    reference: str = Field(min_length=1)


@dataclass
class Arena:
    path: Path
    identity: Identity
    seed: list[Example]
    prompts: list[str]
    probes: list[Probe]
    issues: list[ArenaIssue] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.identity.name


# ---------------------------------------------------------------------- locating
def builtin_arenas() -> dict[str, Path]:
    root = resources.files("dte_aar_arena")
    return {
        entry.name: Path(str(entry))
        for entry in root.iterdir()
        if entry.is_dir() and (Path(str(entry)) / "identity.toml").exists()
    }


def resolve(name_or_path: str | Path) -> Path:
    """A built-in arena's name, or a directory path."""
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        return candidate
    builtins = builtin_arenas()
    if str(name_or_path) in builtins:
        return builtins[str(name_or_path)]
    known = ", ".join(sorted(builtins)) or "none"
    raise ArenaError(f"{name_or_path}: not a directory nor a built-in arena (built-in: {known})")


# ---------------------------------------------------------------------- loading
def load_arena(name_or_path: str | Path, speaker: str | None = None) -> Arena:
    """Load and validate an arena; raise :class:`ArenaError` on the first fatal problem."""
    root = resolve(name_or_path)
    identity = _load_identity(root / "identity.toml")
    speaker = speaker or identity.name
    examples: list[Example] = []
    issues: list[ArenaIssue] = []
    seed_dir = root / "seed"
    if not seed_dir.is_dir():
        raise ArenaError(f"{seed_dir}: missing seed directory")
    for path in sorted(p for p in seed_dir.rglob("*") if p.is_file()):
        found, problems = read_examples(path, speaker, relative_to=root)
        examples.extend(found)
        issues.extend(problems)
    if not examples:
        raise ArenaError(f"{seed_dir}: the seed corpus is empty")
    prompts = _load_prompts(root / "prompts.txt")
    probes, probe_issues = _load_probes(root / "probes.jsonl")
    issues.extend(probe_issues)
    return Arena(root, identity, examples, prompts, probes, issues)


def _load_identity(path: Path) -> Identity:
    if not path.exists():
        raise ArenaError(f"{path}: missing identity file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return Identity.model_validate(data)
    except UnicodeDecodeError as exc:
        raise ArenaError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ArenaError(f"{path}: {exc}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ArenaError(f"{path}: {loc}: {err['msg']}") from None


def _load_prompts(path: Path) -> list[str]:
    if not path.exists():
        raise ArenaError(f"{path}: missing prompts file")
    text = _read_text(path)
    if text is None:
        raise ArenaError(f"{path}: not UTF-8 text")
    prompts = [ln.strip() for ln in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise ArenaError(f"{path}: no prompts")
    return prompts


def _load_probes(path: Path) -> tuple[list[Probe], list[ArenaIssue]]:
    if not path.exists():
        return [], [ArenaIssue(path, None, "missing probes file (held-out evaluation disabled)")]
    probes: list[Probe] = []
    issues: list[ArenaIssue] = []
    for lineno, line in _numbered_lines(path, issues):
        try:
            probes.append(Probe.model_validate_json(line))
        except ValidationError as exc:
            issues.append(ArenaIssue(path, lineno, _first_error(exc)))
    return probes, issues


# ---------------------------------------------------------------------- reading files
def read_examples(
    path: Path, speaker: str, relative_to: Path | None = None
) -> tuple[list[Example], list[ArenaIssue]]:
    """Examples from one file, and the problems found; never raises on bad content."""
    label = str(path.relative_to(relative_to)) if relative_to else str(path)
    suffix = path.suffix.lower()
    issues: list[ArenaIssue] = []
    if suffix in CHAT_SUFFIXES:
        examples = []
        for lineno, line in _numbered_lines(path, issues):
            try:
                text = render_chat(json.loads(line), speaker)
            except (json.JSONDecodeError, ValueError) as exc:
                issues.append(ArenaIssue(path, lineno, _reason(exc)))
                continue
            examples.append(Example(text, f"{label}#{lineno}", "chat"))
        return examples, issues
    if suffix in TEXT_SUFFIXES or suffix in CODE_SUFFIXES:
        text = _read_text(path)
        if text is None:
            return [], [ArenaIssue(path, None, "not UTF-8 text; convert it or leave it out")]
        kind: Literal["text", "code"] = "code" if suffix in CODE_SUFFIXES else "text"
        chunks = chunk_code(text) if kind == "code" else chunk_prose(text)
        return [Example(c, f"{label}#{i}", kind) for i, c in enumerate(chunks)], issues
    return [], [ArenaIssue(path, None, f"unsupported file type {suffix or '(none)'!r}")]


def render_chat(record: object, speaker: str) -> str:
    """OpenAI chat fine-tuning record -> the plain transcript the model trains on."""
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        raise ValueError('expected an object with a "messages" list')
    names = {"system": "System", "user": "User", "assistant": speaker}
    lines = []
    for i, message in enumerate(record["messages"]):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{i}] is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in names:
            raise ValueError(f"messages[{i}].role must be system, user or assistant")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"messages[{i}].content must be a non-empty string")
        lines.append(f"{names[role]}: {content.strip()}")
    if not any(m.get("role") == "assistant" for m in record["messages"]):
        raise ValueError("no assistant message")
    return "\n".join(lines)


def chunk_prose(text: str, limit: int = MAX_CHUNK_CHARS) -> list[str]:
    """Paragraph-packed chunks under ``limit`` chars; a new heading starts a new chunk."""
    paragraphs = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n")]
    return _pack([p for p in paragraphs if p], limit, breaks=lambda p: p.startswith("#"))


def chunk_code(text: str, limit: int = MAX_CHUNK_CHARS) -> list[str]:
    """Chunks that end between top-level definitions (a blank line, then column 0)."""
    blocks: list[str] = []
    current: list[str] = []
    lines = text.replace("\r\n", "\n").split("\n")
    for i, line in enumerate(lines):
        starts_block = (
            current
            and line[:1] not in ("", " ", "\t", ")", "}", "]")
            and i > 0
            and not lines[i - 1].strip()
        )
        if starts_block:
            blocks.append("\n".join(current).strip("\n"))
            current = []
        current.append(line)
    if current:
        blocks.append("\n".join(current).strip("\n"))
    return _pack([b for b in blocks if b.strip()], limit, breaks=lambda b: False, joiner="\n\n")


def _pack(parts: list[str], limit: int, breaks, joiner: str = "\n\n") -> list[str]:
    chunks: list[str] = []
    current = ""
    for part in parts:
        while len(part) > limit:  # a single oversized block: split it on line ends
            cut = part.rfind("\n", 0, limit)
            cut = cut if cut > limit // 2 else limit
            if current:
                chunks.append(current)
                current = ""
            chunks.append(part[:cut].rstrip())
            part = part[cut:].lstrip("\n")
        if current and (len(current) + len(joiner) + len(part) > limit or breaks(part)):
            chunks.append(current)
            current = ""
        current = f"{current}{joiner}{part}" if current else part
    if current:
        chunks.append(current)
    return [c for c in chunks if len(c.strip()) >= MIN_CHUNK_CHARS]


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def _numbered_lines(path: Path, issues: list[ArenaIssue]) -> Iterator[tuple[int, str]]:
    """Non-blank lines with numbers; a line that is not UTF-8 is an issue, not a crash."""
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                issues.append(ArenaIssue(path, lineno, f"not UTF-8 (byte {exc.start})"))
                continue
            if line:
                yield lineno, line


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else err["msg"]


def _reason(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON ({exc.msg} at column {exc.colno})"
    return str(exc)


# ---------------------------------------------------------------------- splits & checks
def heldout(origin: str, seed: int, fraction: float) -> bool:
    """Deterministic held-out assignment by origin, stable across runs and machines."""
    digest = hashlib.sha256(f"{seed}:{origin}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def check_arena(name_or_path: str | Path) -> tuple[Arena | None, list[str]]:
    """Load an arena and add the cross-file checks; return (arena, problems as lines)."""
    try:
        arena = load_arena(name_or_path)
    except ArenaError as exc:
        return None, [str(exc)]
    problems = [str(issue) for issue in arena.issues]
    seed_text = "\n".join(example.text for example in arena.seed)
    for probe in arena.probes:
        if len(probe.reference) > 40 and probe.reference in seed_text:
            problems.append(f"probes.jsonl: {probe.id}: reference appears verbatim in the seed")
    ids = [probe.id for probe in arena.probes]
    problems.extend(
        f"probes.jsonl: duplicate probe id {pid!r}"
        for pid in sorted(set(ids))
        if ids.count(pid) > 1
    )
    return arena, problems
