"""Durable coordinator state: SQLite rows (WAL, synchronous=FULL) plus tensor files.

Big arrays (ring sums, results, C_acc) live in files; SQLite records which file is current.
A new value is written to a NEW file (next generation) and fsynced, then one transaction points the
row at it, then the old file is deleted. A crash before the commit leaves an orphan file that the
next start deletes; a crash after it leaves a stale old file, deleted likewise. Either way an upload
is counted exactly once: its `uploads` row and the accumulator generation that includes it commit
together.

No party secret is ever stored: revealed Shamir shares are (the Bonawitz trust model gives them
to the coordinator anyway), so the secrets they rebuild can be rebuilt after a restart. In HE mode
the coordinator stores the keyless public context, the dealer's sealed boxes and ciphertext sums.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY, phase INTEGER NOT NULL, step INTEGER NOT NULL DEFAULT 0,
    joined TEXT NOT NULL DEFAULT '[]', participants TEXT NOT NULL DEFAULT '[]',
    survivors TEXT, dropped TEXT NOT NULL DEFAULT '[]', layers_completed TEXT NOT NULL DEFAULT '[]',
    params TEXT NOT NULL, failure TEXT NOT NULL DEFAULT '', started_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS joins (round INTEGER, party TEXT, joined_at REAL, PRIMARY KEY (round, party));
CREATE TABLE IF NOT EXISTS adverts (round INTEGER, party TEXT, mask_pk BLOB, share_pk BLOB,
    certificate_pem TEXT, signature BLOB, PRIMARY KEY (round, party));
CREATE TABLE IF NOT EXISTS shares (round INTEGER, sender TEXT, recipient TEXT, ciphertext BLOB,
    PRIMARY KEY (round, sender, recipient));
CREATE TABLE IF NOT EXISTS uploads (round INTEGER, step INTEGER, party TEXT, layer INTEGER, tensor INTEGER,
    sha256 BLOB, bytes INTEGER, PRIMARY KEY (round, layer, tensor, party));
CREATE TABLE IF NOT EXISTS accumulators (round INTEGER, layer INTEGER, tensor INTEGER, generation INTEGER,
    path TEXT, PRIMARY KEY (round, layer, tensor));
CREATE TABLE IF NOT EXISTS reveals (round INTEGER, revealer TEXT, owner TEXT, kind INTEGER, x INTEGER, y BLOB,
    PRIMARY KEY (round, revealer, owner, kind));
CREATE TABLE IF NOT EXISTS results (round INTEGER, layer INTEGER, path TEXT, sha256 BLOB, s_kk_path TEXT,
    PRIMARY KEY (round, layer));
CREATE TABLE IF NOT EXISTS applied (round INTEGER, layer INTEGER, party TEXT, sha256 BLOB,
    PRIMARY KEY (round, layer, party));
CREATE TABLE IF NOT EXISTS c_acc (module TEXT PRIMARY KEY, generation INTEGER, path TEXT, through_round INTEGER);
CREATE TABLE IF NOT EXISTS he_contexts (round INTEGER PRIMARY KEY, dealer TEXT, public_context BLOB);
CREATE TABLE IF NOT EXISTS he_digests (round INTEGER, layer INTEGER, party TEXT, digest BLOB,
    PRIMARY KEY (round, layer, party));
"""
TABLES = ("rounds", "joins", "adverts", "shares", "uploads", "accumulators", "reveals", "results", "applied", "c_acc",
          "he_contexts", "he_digests")
JSON_COLUMNS = ("joined", "participants", "survivors", "dropped", "layers_completed", "params")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, blocks) -> None:
    """Writes byte blocks to a new 0600 file and fsyncs it (and its folder) before returning."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            for block in blocks:  # a generator that raises (a bad ciphertext) leaves no file behind
                handle.write(block)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_array(path: Path, dtype: str) -> np.ndarray:
    return np.fromfile(path, dtype=np.dtype(dtype))


class Store:
    """One SQLite connection shared by the coordinator's threads behind a lock."""

    def __init__(self, state_dir: Path):
        self.root = Path(state_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)  # ring sums and revealed shares are nobody else's business
        for sub in ("staging", "acc", "results", "c_acc"):
            (self.root / sub).mkdir(mode=0o700, exist_ok=True)
        self.lock = threading.RLock()
        db = self.root / "coordinator.sqlite"
        if not db.exists():
            os.close(os.open(db, os.O_WRONLY | os.O_CREAT, 0o600))
        self.db = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self._remove_orphans()

    def close(self) -> None:
        with self.lock:
            self.db.close()

    @contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE .. COMMIT (ROLLBACK on any exception)."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def query(self, sql: str, *args) -> list[sqlite3.Row]:
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    def _remove_orphans(self) -> None:
        # Files no row points at: a crash between writing a generation and committing it, or after
        # committing and before deleting the old one. Staging files are cut uploads: resent whole.
        referenced = {r[0] for t in ("accumulators", "c_acc") for r in self.query(f"SELECT path FROM {t}")}
        referenced |= {p for r in self.query("SELECT path, s_kk_path FROM results") for p in r}
        for sub in ("acc", "c_acc", "results", "staging"):
            for path in (self.root / sub).iterdir():
                if str(path.relative_to(self.root)) not in referenced:
                    path.unlink()

    def path(self, relative: str) -> Path:
        return self.root / relative

    # ------------------------------------------------------------------ meta and rounds

    def meta(self, key: str, default: str | None = None) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key = ?", key)
        return rows[0]["value"] if rows else default

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def latest_round(self) -> dict | None:
        rows = self.query("SELECT * FROM rounds ORDER BY id DESC LIMIT 1")
        return _round(rows[0]) if rows else None

    def round(self, round_id: int) -> dict | None:
        rows = self.query("SELECT * FROM rounds WHERE id = ?", round_id)
        return _round(rows[0]) if rows else None

    @staticmethod
    def save_round(db: sqlite3.Connection, record: dict) -> None:
        """INSERT OR REPLACE a round row, inside the caller's transaction."""
        row = {k: (json.dumps(v) if k in JSON_COLUMNS else v) for k, v in record.items()}
        row["updated_at"] = time.time()
        names = ", ".join(row)
        db.execute(f"INSERT OR REPLACE INTO rounds ({names}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))

    # ------------------------------------------------------------------ tensor files

    def new_generation_file(self, sub: str, stem: str, generation: int, blocks) -> str:
        """Writes `sub/stem.gN` durably and returns its path relative to the state folder."""
        relative = f"{sub}/{stem}.g{generation}"
        target = self.root / relative
        if target.exists():  # an orphan of a crashed attempt at this very generation
            target.unlink()
        write_file(target, blocks)
        return relative

    def delete_file(self, relative: str | None) -> None:
        if relative:
            (self.root / relative).unlink(missing_ok=True)

    def snapshot(self) -> dict[str, list[tuple]]:
        """Every row of every table (tests compare durable state before and after a refused call)."""
        return {t: [tuple(r) for r in self.query(f"SELECT * FROM {t} ORDER BY 1, 2")] for t in TABLES}


def _round(row: sqlite3.Row) -> dict:
    record = dict(row)
    for key in JSON_COLUMNS:
        record[key] = json.loads(record[key]) if record[key] is not None else None
    return record
