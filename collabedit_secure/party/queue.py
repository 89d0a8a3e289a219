"""The party's private edit queue: SQLite in WAL mode, a file only its owner can read (0600).

States: QUEUED -> IN_ROUND (round id) -> APPLIED, or back to QUEUED when the round fails or rolls
back (the edits wait for the next round), or FAILED with an error. Records are stored in the
CounterFact schema, so that the daemon can evaluate its own edits after a round.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from collabedit_secure.editing.requests import EditRequest, RequestError

STATES = ("QUEUED", "IN_ROUND", "APPLIED", "FAILED")
DEFAULT_MAX_QUEUED = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS edits (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id TEXT NOT NULL UNIQUE,
    record TEXT NOT NULL,
    state TEXT NOT NULL,
    round_id INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    submitted_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (round_id INTEGER PRIMARY KEY, result TEXT NOT NULL);
"""


class QueueFullError(RuntimeError):
    """The queue holds max_queued QUEUED requests; nothing of the submission was queued."""


@dataclass(frozen=True)
class QueuedEdit:
    case_id: str
    record: dict  # CounterFact schema
    state: str
    round_id: int
    error: str
    submitted_at: float

    def request(self) -> EditRequest:
        return EditRequest.from_record(self.record)


def to_record(case_id: str, prompt: str, subject: str, target_new: str, target_true: str | None = None,
              relation_id: str | None = None, paraphrase_prompts=(), neighborhood_prompts=()) -> dict:
    """A request as a CounterFact record (what EditRequest.from_record and the evaluation read)."""
    rewrite = {"prompt": prompt, "subject": subject, "target_new": {"str": target_new}}
    if target_true is not None:
        rewrite["target_true"] = {"str": target_true}
    if relation_id is not None:
        rewrite["relation_id"] = relation_id
    return {"case_id": case_id, "requested_rewrite": rewrite, "paraphrase_prompts": list(paraphrase_prompts),
            "neighborhood_prompts": list(neighborhood_prompts)}


def check_record(record: dict) -> str | None:
    """None if the record is a valid edit request, else the reason (the project's request rules)."""
    case_id = record.get("case_id")
    if not isinstance(case_id, str) or not case_id.strip():
        return "case_id must be a non-empty string"
    if len(case_id) > 128:
        return "case_id is longer than 128 characters"
    try:
        EditRequest.from_record(record)
    except RequestError as error:
        return str(error).removeprefix(f"edit request {case_id!r}: ")
    for name in ("paraphrase_prompts", "neighborhood_prompts"):
        if not all(isinstance(p, str) and p.strip() for p in record.get(name, [])):
            return f"{name} must be non-empty strings"
    return None


def _create_private(path: Path) -> None:
    # Made 0600 before SQLite opens it; SQLite gives its -wal and -shm files the database's mode.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    os.close(fd)


class EditQueue:
    def __init__(self, path: str | Path, max_queued: int = DEFAULT_MAX_QUEUED):
        self.path, self.max_queued = Path(path), max_queued
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _create_private(self.path)
        self._lock = threading.Lock()  # one connection, shared by the gRPC threads and the round thread
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self, fn):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._db)
                self._db.execute("COMMIT")
                return result
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def submit(self, records: list[dict]) -> tuple[list[str], list[tuple[str, str]]]:
        """Queues the valid records; returns (accepted case ids, [(case id, reason)] refused)."""

        def run(db):
            queued = db.execute("SELECT COUNT(*) FROM edits WHERE state = 'QUEUED'").fetchone()[0]
            accepted, rejected, batch = [], [], set()
            for record in records:
                case_id = record.get("case_id") if isinstance(record.get("case_id"), str) else ""
                reason = check_record(record)
                if reason is None and (case_id in batch or db.execute(
                        "SELECT 1 FROM edits WHERE case_id = ?", (case_id,)).fetchone()):
                    reason = f"case_id {case_id!r} already submitted to this party"
                if reason is not None:
                    rejected.append((case_id, reason))
                    continue
                batch.add(case_id)
                accepted.append((case_id, record))
            if queued + len(accepted) > self.max_queued:
                raise QueueFullError(f"the queue holds {queued} requests; {len(accepted)} more would exceed "
                                     f"its limit of {self.max_queued}")
            now = time.time()
            db.executemany("INSERT INTO edits (case_id, record, state, submitted_at) VALUES (?, ?, 'QUEUED', ?)",
                           [(c, json.dumps(r), now) for c, r in accepted])
            return [c for c, _ in accepted], rejected

        return self._tx(run)

    def list(self, state: str | None = None) -> list[QueuedEdit]:
        if state is not None and state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        sql = "SELECT case_id, record, state, round_id, error, submitted_at FROM edits"
        args = ()
        if state is not None:
            sql, args = sql + " WHERE state = ?", (state,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY seq", args).fetchall()
        return [QueuedEdit(c, json.loads(r), s, i, e, t) for c, r, s, i, e, t in rows]

    def count(self, state: str = "QUEUED") -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM edits WHERE state = ?", (state,)).fetchone()[0]

    def take_batch(self, round_id: int, limit: int | None = None) -> list[QueuedEdit]:
        """Oldest QUEUED requests become IN_ROUND for round_id."""

        def run(db):
            sql = "SELECT case_id FROM edits WHERE state = 'QUEUED' ORDER BY seq"
            ids = [row[0] for row in db.execute(sql + (f" LIMIT {int(limit)}" if limit else "")).fetchall()]
            db.executemany("UPDATE edits SET state = 'IN_ROUND', round_id = ? WHERE case_id = ?",
                           [(round_id, c) for c in ids])
            return ids

        ids = self._tx(run)
        return [e for e in self.list("IN_ROUND") if e.case_id in set(ids)]

    def finish_round(self, round_id: int, outcome: str, error: str = "") -> int:
        """APPLIED, QUEUED (failed or rolled-back round: retry next time) or FAILED, for round_id's batch."""
        if outcome not in ("APPLIED", "QUEUED", "FAILED"):
            raise ValueError(f"outcome must be APPLIED, QUEUED or FAILED, got {outcome!r}")
        new_round = 0 if outcome == "QUEUED" else round_id
        return self._tx(lambda db: db.execute(
            "UPDATE edits SET state = ?, round_id = ?, error = ? WHERE state = 'IN_ROUND' AND round_id = ?",
            (outcome, new_round, error if outcome == "FAILED" else "", round_id)).rowcount)

    def requeue_interrupted(self) -> int:
        """At start: requests left IN_ROUND by a daemon that stopped mid-round go back to QUEUED."""
        return self._tx(lambda db: db.execute(
            "UPDATE edits SET state = 'QUEUED', round_id = 0 WHERE state = 'IN_ROUND'").rowcount)

    # -- round results (GetRoundResult)

    def save_result(self, round_id: int, result: dict) -> None:
        self._tx(lambda db: db.execute("INSERT OR REPLACE INTO rounds VALUES (?, ?)", (round_id, json.dumps(result))))

    def result(self, round_id: int = 0) -> dict | None:
        with self._lock:
            if round_id == 0:
                row = self._db.execute("SELECT result FROM rounds ORDER BY round_id DESC LIMIT 1").fetchone()
            else:
                row = self._db.execute("SELECT result FROM rounds WHERE round_id = ?", (round_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def results(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT result FROM rounds ORDER BY round_id").fetchall()
        return [json.loads(r[0]) for r in rows]
