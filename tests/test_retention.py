"""Checkpoint retention and recovery from a corrupt checkpoint, through the real CLI."""

import json
from pathlib import Path

from dte_aar.store import Store
from helpers import FAST_CONFIG, run_dte

CONFIG = FAST_CONFIG.replace("[train]\n", "[train]\nkeep_checkpoints = 2\n")


def test_keeps_last_k_and_best_then_recovers_from_corruption(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "dte.toml").write_text(CONFIG)
    result = run_dte("bootstrap", "-w", str(ws))
    assert result.returncode == 0, result.stderr
    with Store.open(ws, readonly=True) as store:
        rows = {r["cycle"]: r["status"] for r in store.db["checkpoints"].rows}
        ppl = store.metric_by_cycle("heldout_ppl")
    best = min(ppl, key=ppl.get)
    kept = {c for c, status in rows.items() if status == "good"}
    assert kept == {1, 2, best}
    assert all(rows[c] == "pruned" for c in rows if c not in kept)
    files = {p.name for p in (ws / "checkpoints").iterdir()}
    for cycle in rows:
        present = f"cycle-{cycle:04d}.safetensors" in files
        assert present == (cycle in kept), (cycle, files)

    latest = ws / "checkpoints" / "cycle-0002.safetensors"
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    latest.write_bytes(bytes(data))
    (ws / "dte.toml").write_text(CONFIG)
    result = run_dte("bootstrap", "-w", str(ws), "--cycles", "1")
    assert result.returncode == 0, result.stderr
    assert "cycle-0002.safetensors: corrupt or missing; using the previous checkpoint" in (
        result.stderr
    )
    with Store.open(ws, readonly=True) as store:
        statuses = {r["cycle"]: r["status"] for r in store.db["checkpoints"].rows}
        assert statuses[2] == "bad"
        (data,) = store.db.execute(
            "select data from events where cycle = 3 and kind like 'stage_%' order by id"
        ).fetchone()
        grow = json.loads(data)["grow"]  # grown from cycle 1's checkpoint, not cycle 2's
        assert store.cycle(3)["layers"] == store.cycle(1)["layers"] + grow
        assert store.latest_checkpoint().cycle == 3


def test_prune_keeps_the_best_even_when_old(tmp_path: Path) -> None:
    from dte_aar.cycle import prune_checkpoints

    (tmp_path / "ck").mkdir()
    with Store.open(tmp_path) as store:
        for cycle, ppl in enumerate([50.0, 90.0, 80.0, 70.0]):
            path = tmp_path / "ck" / f"cycle-{cycle:04d}.safetensors"
            for suffix in (".safetensors", ".json", ".optim.safetensors"):
                path.with_name(f"cycle-{cycle:04d}{suffix}").write_text("x")
            store.register_checkpoint(cycle, path, f"sha{cycle}", cycle + 1, 10)
            store.log_metric(cycle=cycle, name="heldout_ppl", value=ppl)
        removed = prune_checkpoints(store, keep=2)
        assert [Path(p).name for p in removed] == ["cycle-0001.safetensors"]
        assert [r["cycle"] for r in store.good_checkpoints()] == [0, 2, 3]
    assert sorted(p.name for p in (tmp_path / "ck").iterdir() if "0001" in p.name) == []
    assert len(list((tmp_path / "ck").iterdir())) == 9
