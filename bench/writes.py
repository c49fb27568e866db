"""4. Database writes per generated message, by length

A separate daphne process runs with ``DEBUG=true LOG_SQL=true`` (the opt-in
in config/settings/base.py), so Django logs every SQL statement. For one
streaming POST per length, the lines the process logged during that
exchange are counted: INSERT/UPDATE/DELETE on ``chat_message`` that name
the assistant message's id (its create, its checkpoints, its final state),
and every write of the exchange on any table. The fake sends chunks 1 ms
apart, so 1,000 chunks take about as long as a checkpoint interval or two.

Reference, not a measurement: the floor is 2 (create + final); a write per
delta would be chunks + 2.
"""

from __future__ import annotations

import asyncio
import re
import uuid

from bench.sseload import open_reader

from .deployment import Deployment, message_request, model
from .stats import fmt

LENGTHS = (10, 100, 1000)
INTERVAL_MS = 1
WRITE = re.compile(r"django\.db\.backends .*?\(\d+\.\d+\) (INSERT INTO|UPDATE|DELETE FROM) \"(\w+)\"")


def models(quick: bool) -> list[str]:
    return [model(chunks=n, interval_ms=INTERVAL_MS) for n in LENGTHS]


async def run(dep: Deployment, quick: bool) -> dict:
    port = dep.start_server({"DEBUG": "true", "LOG_SQL": "true"})
    log = dep.stack.logs[port]
    results = []
    try:
        # A first generation warms the new process up (imports, connections); not counted.
        await _generate(dep, port, models(quick)[0])
        for chunks, model_name in zip(LENGTHS, models(quick), strict=True):
            conversation = dep.conversations(1, model_name)[0]
            await asyncio.sleep(0.5)  # let the request log of the set-up settle
            start = log.stat().st_size
            reader = await _generate(dep, port, model_name, conversation)
            await asyncio.sleep(0.5)
            with log.open("rb") as f:
                f.seek(start)
                lines = f.read().decode(errors="replace").splitlines()
            [(message_id, duration_ms, seq)] = dep.stack.query(
                "SELECT id, duration_ms, seq FROM chat_message WHERE conversation_id = ? AND role = 'assistant'",
                (dep.stack.uuid(conversation),),
            )
            results.append(_count(lines, uuid.UUID(str(message_id)), chunks, duration_ms, seq, len(reader.stamps)))
            r = results[-1]
            print(
                f"  writes, {chunks:>5} chunks in {fmt(duration_ms / 1000, 2)} s: {r['message_writes']} to the message"
                f" ({r['inserts']} insert, {r['checkpoints']} checkpoints, {r['finals']} final);"
                f" {r['all_writes']} writes in the whole exchange",
                flush=True,
            )
    finally:
        dep.stop_server(port)
    constant = len({r["message_writes"] - r["checkpoints"] for r in results}) == 1 and all(
        r["checkpoints"] <= r["duration_s"] / 1.0 + 1 for r in results
    )
    rows = [
        {
            "measure": f"DB writes per message, {r['chunks']} chunks ({fmt(r['duration_s'], 2)} s)",
            "unit": "writes",
            "app": r["message_writes"],
            "baseline": r["chunks"] + 2,
            "baseline_label": "a write per delta",
            "added": None,
            "target": "constant (<= 2 + 1 per second)",
            "verdict": "met" if r["message_writes"] <= 2 + int(r["duration_s"]) + 1 else "missed",
            "problems": [] if r["deltas_read"] == r["chunks"] else [f"read {r['deltas_read']} of {r['chunks']} deltas"],
            "summary": True,
        }
        for r in results
    ]
    return {
        "title": "Database writes per generated message",
        "rows": rows,
        "details": results,
        "notes": [
            f"{r['chunks']} chunks in {fmt(r['duration_s'], 2)} s: {r['inserts']} INSERT, {r['checkpoints']}"
            f" checkpoint UPDATEs, {r['finals']} final UPDATE of the message; every write of the exchange:"
            f" {', '.join(f'{k} x{v}' for k, v in sorted(r['by_table'].items()))}."
            for r in results
        ],
        "constant": constant,
        "config": {"interval_ms": INTERVAL_MS},
    }


async def _generate(dep: Deployment, port: int, model_name: str, conversation: str | None = None):
    """One streaming POST, read to its final event."""
    conversation = conversation or dep.conversations(1, model_name)[0]
    request = message_request(port, dep.session, conversation, model_name, sse=True).encode()
    reader = await open_reader("127.0.0.1", port, request, "app", send=False)
    try:
        reader.send()
        await asyncio.wait_for(reader.done, 60)
    finally:
        reader.close()
    if reader.error:
        raise RuntimeError(f"generation with {model_name} failed: {reader.error}")
    return reader


def _count(lines: list[str], message_id: uuid.UUID, chunks: int, duration_ms: int, seq: int, deltas_read: int) -> dict:
    inserts = checkpoints = finals = other = all_writes = 0
    tables: dict[str, int] = {}
    for line in lines:
        match = WRITE.search(line)
        if match is None:
            continue
        all_writes += 1
        verb, table = match.groups()
        tables[f"{verb.split()[0]} {table}"] = tables.get(f"{verb.split()[0]} {table}", 0) + 1
        # SQLite logs a UUID as 32 hex digits, PostgreSQL in its dashed form.
        if table != "chat_message" or (message_id.hex not in line and str(message_id) not in line):
            continue
        if verb == "INSERT INTO":
            inserts += 1
        elif verb == "UPDATE" and '"status" =' in line.split(" WHERE ", 1)[0]:
            finals += 1
        elif verb == "UPDATE":
            checkpoints += 1
        else:
            other += 1
    return {
        "chunks": chunks,
        "duration_s": duration_ms / 1000,
        "seq": seq,
        "deltas_read": deltas_read,
        "message_writes": inserts + checkpoints + finals + other,
        "inserts": inserts,
        "checkpoints": checkpoints,
        "finals": finals,
        "other": other,
        "all_writes": all_writes,
        "by_table": tables,
    }
