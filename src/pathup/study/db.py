"""Storage of the blinded rater study (paper Table 5): one SQLite file in WAL mode.

Tables:
  meta        key/value: ``state`` (open | closed), ``files_dir``, ``created``, ``config`` (JSON)...
  images      id (random hex), class, is_real, file (random name inside ``files_dir``), source
  raters      id, name, token_hash (SHA-256 of the token; the token itself is never stored)
  rater_order rater_id, position, image_id: each rater's own random order of all images
  ratings     rater_id, image_id, score 1..10, created, updated; one row per rater and image

Every statement is parameterised. Each call opens its own connection (cheap for SQLite; one more
connection stays open for the object's lifetime so that the WAL is not checkpointed on every close),
so the class is safe to share between the web server's worker threads; writes run inside
``BEGIN IMMEDIATE`` transactions with a busy timeout, so concurrent raters queue instead of failing.
``synchronous = FULL``: a rating acknowledged to a rater has reached the disk (fsync of the WAL).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import hmac
import json
import random
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pathup.errors import PathUpError
from pathup.io import CONTROL_CHARS, show_controls


SCHEMA_VERSION = 1
MIN_SCORE, MAX_SCORE = 1, 10
STATES = ("open", "closed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    id      TEXT PRIMARY KEY,
    class   TEXT NOT NULL,
    is_real INTEGER NOT NULL CHECK (is_real IN (0, 1)),
    file    TEXT NOT NULL UNIQUE,
    source  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS raters (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    created    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rater_order (
    rater_id INTEGER NOT NULL REFERENCES raters(id),
    position INTEGER NOT NULL,
    image_id TEXT NOT NULL REFERENCES images(id),
    PRIMARY KEY (rater_id, position),
    UNIQUE (rater_id, image_id)
);
CREATE TABLE IF NOT EXISTS ratings (
    rater_id INTEGER NOT NULL REFERENCES raters(id),
    image_id TEXT NOT NULL REFERENCES images(id),
    score    INTEGER NOT NULL CHECK (score BETWEEN 1 AND 10),
    created  TEXT NOT NULL,
    updated  TEXT NOT NULL,
    PRIMARY KEY (rater_id, image_id)
);
"""


class StudyClosedError(PathUpError):
    """A rating was sent after the study was closed."""


class UnknownImageError(PathUpError):
    """An image id that is not part of the study (or not in this rater's list)."""


@dataclass(frozen=True)
class ImageRow:
    id: str
    cls: str
    is_real: bool
    file: str
    source: str


@dataclass(frozen=True)
class Rater:
    id: int
    name: str


@dataclass(frozen=True)
class Rating:
    rater: str
    image_id: str
    cls: str
    is_real: bool
    score: int
    created: str
    updated: str


def hash_token(token: str) -> str:
    """SHA-256 hex digest of a rater token (tokens are 256-bit random, so no salt or slow hash is needed)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def files_dir_for(db_path: str | Path) -> Path:
    """The folder that holds a study's re-encoded images: ``study.db`` -> ``study_files/``."""
    db_path = Path(db_path)
    return db_path.with_name(db_path.stem + "_files")


class StudyDB:
    """A rater study stored in one SQLite file (WAL mode) plus a folder of re-encoded images."""

    def __init__(self, path: str | Path, *, create: bool = False, timeout: float = 30.0):
        self.path = Path(path)
        self.timeout = timeout
        self._anchor: sqlite3.Connection | None = None
        self._write_lock = threading.Lock()
        if not create:
            if not self.path.is_file():
                raise PathUpError(f"study database not found: {self.path} (make one with 'pathup study create')")
            try:
                with self.connect() as con:
                    version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            except sqlite3.DatabaseError as err:
                raise PathUpError(f"{self.path} is not a PathUp study database ({err})") from None
            if version is None:
                raise PathUpError(f"{self.path} is not a PathUp study database (no schema_version)")
            if int(version[0]) != SCHEMA_VERSION:
                raise PathUpError(f"{self.path}: study schema version {version[0]}, this PathUp reads {SCHEMA_VERSION}")
        else:
            with self.connect() as con:
                con.execute("PRAGMA journal_mode = WAL")
                con.executescript(SCHEMA)
                con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                            (str(SCHEMA_VERSION),))
                con.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('state', 'open')")
        # While one connection stays open, closing the others does not checkpoint and delete the WAL
        # file each time (which costs a checkpoint and fsyncs per request).
        self._anchor = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False)
        self._anchor.execute("SELECT count(*) FROM meta").fetchone()  # maps the WAL index (a reader)

    def close(self) -> None:
        """Close the long-lived connection (the last close checkpoints the WAL into the database)."""
        if self._anchor is not None:
            self._anchor.close()
            self._anchor = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- connections ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A fresh autocommit connection (use ``transaction`` for multi-statement writes)."""
        con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        try:
            con.execute("PRAGMA foreign_keys = ON")
            con.execute("PRAGMA synchronous = FULL")
            con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on error): takes the write lock up front."""
        # Writers of this process queue on a lock (first come, first served) instead of SQLite's
        # busy handler, which polls with growing sleeps and gives seconds-long tail latencies.
        with self._write_lock, self.connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # -- meta and state ------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self.connect() as con:
            row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as con:
            con.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    @property
    def state(self) -> str:
        return self.get_meta("state", "open") or "open"

    def set_state(self, state: str) -> None:
        """Open or close the study; a closed study refuses every new or changed rating."""
        if state not in STATES:
            raise PathUpError(f"study state must be one of {', '.join(STATES)}, got {state!r}")
        with self.transaction() as con:
            con.execute("UPDATE meta SET value = ? WHERE key = 'state'", (state,))
            con.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (f"{state}_at", now_iso()))

    @property
    def files_dir(self) -> Path:
        name = self.get_meta("files_dir")
        return self.path.parent / name if name else files_dir_for(self.path)

    @property
    def config(self) -> dict:
        return json.loads(self.get_meta("config", "{}") or "{}")

    # -- images --------------------------------------------------------------------------------------
    def add_images(self, rows: list[ImageRow]) -> None:
        with self.transaction() as con:
            con.executemany("INSERT INTO images (id, class, is_real, file, source) VALUES (?, ?, ?, ?, ?)",
                            [(r.id, r.cls, int(r.is_real), r.file, r.source) for r in rows])

    def images(self) -> list[ImageRow]:
        with self.connect() as con:
            rows = con.execute("SELECT id, class, is_real, file, source FROM images "
                               "ORDER BY class, is_real DESC, id").fetchall()
        return [ImageRow(r[0], r[1], bool(r[2]), r[3], r[4]) for r in rows]

    def image_file(self, image_id: str) -> Path:
        """Path of an image's re-encoded file; UnknownImageError when the id is not in the study."""
        with self.connect() as con:
            row = con.execute("SELECT file FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            raise UnknownImageError(f"unknown image id {image_id!r}")
        return self.files_dir / row[0]

    # -- raters --------------------------------------------------------------------------------------
    def add_rater(self, name: str, *, reset_token: bool = False) -> str:
        """Register a rater (or give an existing one a new token) and return the secret token.

        A new rater gets a random order of all images of the study (their own permutation). With
        ``reset_token`` an existing rater keeps their ratings and order; only the token changes.
        """
        name = name.strip()
        if not name or len(name) > 200:
            raise PathUpError("rater name must be 1 to 200 characters")
        if CONTROL_CHARS.search(name):
            raise PathUpError(f"rater name '{show_controls(name)}' has control characters "
                              "(escape sequences, tabs, newlines); use plain text")
        token = secrets.token_urlsafe(32)
        with self.transaction() as con:
            row = con.execute("SELECT id FROM raters WHERE name = ?", (name,)).fetchone()
            if row is not None:
                if not reset_token:
                    raise PathUpError(f"rater {name!r} already exists in {self.path} "
                                      "(use --reset-token to issue a new token)")
                con.execute("UPDATE raters SET token_hash = ? WHERE id = ?", (hash_token(token), row[0]))
                return token
            if reset_token:
                raise PathUpError(f"no rater named {name!r} in {self.path}")
            cur = con.execute("INSERT INTO raters (name, token_hash, created) VALUES (?, ?, ?)",
                              (name, hash_token(token), now_iso()))
            rater_id = cur.lastrowid
            ids = [r[0] for r in con.execute("SELECT id FROM images ORDER BY id")]
            if not ids:
                raise PathUpError(f"{self.path} holds no images")
            random.SystemRandom().shuffle(ids)
            con.executemany("INSERT INTO rater_order (rater_id, position, image_id) VALUES (?, ?, ?)",
                            [(rater_id, pos, image_id) for pos, image_id in enumerate(ids)])
        return token

    def raters(self) -> list[Rater]:
        with self.connect() as con:
            return [Rater(r[0], r[1]) for r in con.execute("SELECT id, name FROM raters ORDER BY id")]

    def rater_for_token(self, token: str | None) -> Rater | None:
        """The rater whose token this is, else None.

        The token's SHA-256 is looked up through the index (the client cannot steer the hash, so the
        lookup's timing tells it nothing about stored hashes); the final check is ``hmac.compare_digest``.
        """
        if not token or len(token) > 512:
            return None
        digest = hash_token(token)
        with self.connect() as con:
            row = con.execute("SELECT id, name, token_hash FROM raters WHERE token_hash = ?", (digest,)).fetchone()
        if row is None or not hmac.compare_digest(row[2].encode(), digest.encode()):
            return None
        return Rater(row[0], row[1])

    # -- a rater's queue and ratings -----------------------------------------------------------------
    def queue(self, rater_id: int) -> list[dict]:
        """The rater's images in their order: ``[{"image_id", "position" (1-based), "score" or None}]``."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT o.image_id, o.position, r.score FROM rater_order o "
                "LEFT JOIN ratings r ON r.rater_id = o.rater_id AND r.image_id = o.image_id "
                "WHERE o.rater_id = ? ORDER BY o.position", (rater_id,)).fetchall()
        return [{"image_id": r[0], "position": r[1] + 1, "score": r[2]} for r in rows]

    def in_queue(self, rater_id: int, image_id: str) -> bool:
        with self.connect() as con:
            return con.execute("SELECT 1 FROM rater_order WHERE rater_id = ? AND image_id = ?",
                               (rater_id, image_id)).fetchone() is not None

    def rate(self, rater_id: int, image_id: str, score: int) -> str:
        """Insert or change the rater's score of one image (an upsert on (rater, image)).

        Raises:
            PathUpError: the score is not a whole number in 1..10.
            UnknownImageError: the image is not in this rater's list.
            StudyClosedError: the study is closed (checked inside the same write transaction, so a
                rating either lands before the study closes or is refused).

        Returns:
            The time stamp stored as ``updated``.
        """
        if isinstance(score, bool) or not isinstance(score, int) or not MIN_SCORE <= score <= MAX_SCORE:
            raise PathUpError(f"score must be a whole number from {MIN_SCORE} (synthetic) to {MAX_SCORE} (real), "
                              f"got {score!r}")
        stamp = now_iso()
        with self.transaction() as con:
            state = con.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()
            if state is not None and state[0] == "closed":
                raise StudyClosedError("the study is closed; ratings can no longer be added or changed")
            if con.execute("SELECT 1 FROM rater_order WHERE rater_id = ? AND image_id = ?",
                           (rater_id, image_id)).fetchone() is None:
                raise UnknownImageError(f"unknown image id {image_id!r}")
            con.execute(
                "INSERT INTO ratings (rater_id, image_id, score, created, updated) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(rater_id, image_id) DO UPDATE SET score = excluded.score, updated = excluded.updated",
                (rater_id, image_id, score, stamp, stamp))
        return stamp

    def rater_ratings(self, rater_id: int) -> list[dict]:
        """One rater's own ratings (no class or real/synthetic labels), in their order."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT r.image_id, o.position, r.score, r.updated FROM ratings r "
                "JOIN rater_order o ON o.rater_id = r.rater_id AND o.image_id = r.image_id "
                "WHERE r.rater_id = ? ORDER BY o.position", (rater_id,)).fetchall()
        return [{"image_id": r[0], "position": r[1] + 1, "score": r[2], "updated": r[3]} for r in rows]

    def all_ratings(self) -> list[Rating]:
        """Every rating with the ground truth joined in (for the report; never served to raters)."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT ra.name, i.id, i.class, i.is_real, r.score, r.created, r.updated FROM ratings r "
                "JOIN raters ra ON ra.id = r.rater_id JOIN images i ON i.id = r.image_id "
                "ORDER BY ra.id, i.class, i.is_real DESC, i.id").fetchall()
        return [Rating(r[0], r[1], r[2], bool(r[3]), int(r[4]), r[5], r[6]) for r in rows]
