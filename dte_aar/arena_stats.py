"""`dte arena show`: examples, bytes and tokens of an arena by source, plus workspace imports."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from dte_aar.arena import Arena
from dte_aar.config import Settings
from dte_aar.store import DB_FILE, Store
from dte_aar.tokenizer import load_tokenizer, train_tokenizer

PRESET_VOCAB = {"tiny": 2048, "small": 50257}


def arena_summary(arena: Arena, workspace: Path, settings: Settings) -> dict[str, Any]:
    """Rows per source (seed sub-folder or file, then imports); tokens by the workspace's
    tokenizer when one exists, otherwise by a BPE trained here on the seed alone."""
    groups: dict[str, list[str]] = defaultdict(list)
    for example in arena.seed:
        parts = Path(example.origin.split("#")[0]).parts
        groups["/".join(parts[:2])].append(example.text)
    db = Path(workspace) / DB_FILE
    if db.exists():
        with Store.open(workspace, readonly=True) as store:
            rows = store.db.execute(
                "select text from samples where source = 'import' and status = 'accepted'"
            )
            groups["imports (workspace)"] = [text for (text,) in rows]
    tokenizer_path = Path(workspace) / "tokenizer.json"
    if tokenizer_path.exists():
        tokenizer, used = load_tokenizer(tokenizer_path), str(tokenizer_path)
    else:
        vocab = settings.train.vocab_size or PRESET_VOCAB[settings.preset]
        tokenizer = train_tokenizer((e.text for e in arena.seed), vocab)
        used = f"a {vocab}-token BPE trained on the seed just now"
    table = []
    for source, texts in sorted(groups.items()):
        encoded = tokenizer.encode_batch(texts) if texts else []
        table.append(
            {
                "source": source,
                "examples": len(texts),
                "bytes": sum(len(t.encode("utf-8")) for t in texts),
                "tokens": sum(len(e.ids) for e in encoded),
            }
        )
    table.append(
        {
            "source": "total",
            "examples": sum(r["examples"] for r in table),
            "bytes": sum(r["bytes"] for r in table),
            "tokens": sum(r["tokens"] for r in table),
        }
    )
    return {"rows": table, "tokenizer": used}
