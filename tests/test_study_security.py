"""The rater study against misuse: request size limit, served images that carry no length signal,
hostile rater names in the report and CSV, a private answer key, an unwritable output folder."""

from __future__ import annotations

import csv
import io
import os
import sqlite3

import pytest

from pathup.errors import PathUpError
from pathup.sample_data import breakhis_dir
from pathup.study.create import create_study
from pathup.study.db import StudyDB
from study_util import PER_CLASS, auth, client, copy_study, make_synthetic_dir, study, synthetic_dir, template_db  # noqa: F401 - fixtures



# ------------------------------------------------------------------------------ request body limit
def test_large_request_bodies_are_refused_with_413(client, study):
    from pathup.study.app import MAX_BODY_BYTES

    token = study.add_rater("A")
    image_id = client.get("/api/next", headers=auth(token)).json()["image_id"]
    big = b'{"image_id": "' + b"a" * (50 * 2**20) + b'", "score": 5}'
    for headers in (auth(token), {}):
        r = client.post("/api/rating", headers={**headers, "Content-Type": "application/json"}, content=big)
        assert r.status_code == 413 and "too large" in r.json()["detail"]

    def chunks():  # no Content-Length: the body is counted as it arrives
        for _ in range(64):
            yield b"x" * 4096

    r = client.post("/api/rating", headers={**auth(token), "Content-Type": "application/json"}, content=chunks())
    assert r.status_code == 413
    assert MAX_BODY_BYTES <= 64 * 1024
    ok = client.post("/api/rating", headers=auth(token), json={"image_id": image_id, "score": 6})
    assert ok.status_code == 200 and ok.json()["score"] == 6


# ------------------------------------------------------------------------------ no length signal
def test_served_images_are_the_same_size_and_carry_no_padding_signal(client, study):
    token = study.add_rater("A")
    truth = {im.id: im.is_real for im in study.images()}
    sizes = {True: set(), False: set()}
    zero_tails = []
    for image_id, is_real in truth.items():
        r = client.get(f"/api/images/{image_id}", headers=auth(token))
        assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"
        sizes[is_real].add(len(r.content))
        zero_tails.append(len(r.content) - len(r.content.rstrip(b"\0")))
    # One size for all (real and synthetic alike), and no run of zero bytes that would count the padding.
    assert len(sizes[True] | sizes[False]) == 1
    assert max(zero_tails) < 8, zero_tails
    size = next(iter(sizes[True]))
    from pathup.study.create import SIZE_BUCKET

    assert size % SIZE_BUCKET == 0


def test_files_on_disk_are_padded_with_random_bytes(study):
    files = [study.files_dir / im.file for im in study.images()]
    tails = [p.read_bytes() for p in files]
    assert len({len(t) for t in tails}) == 1
    assert all(len(t) - len(t.rstrip(b"\0")) < 8 for t in tails)


# ------------------------------------------------------------------------------ hostile rater names
HOSTILE = ["=HYPERLINK(\"http://x\",\"y\")", "+1+2", "-3", "@SUM(A1)", "a|b", "\tTab", "\x1b[31mRed\x1b[0m",
           "line\nbreak"]


def _add_raw_rater(db: StudyDB, name: str, score: int) -> None:
    """A rater inserted as an older version (no name check) would have stored it."""
    con = sqlite3.connect(db.path)
    with con:
        cur = con.execute("INSERT INTO raters (name, token_hash, created) VALUES (?, ?, ?)",
                          (name, os.urandom(16).hex(), "2024-01-01"))
        ids = [r[0] for r in con.execute("SELECT id FROM images ORDER BY id")]
        con.executemany("INSERT INTO rater_order (rater_id, position, image_id) VALUES (?, ?, ?)",
                        [(cur.lastrowid, i, x) for i, x in enumerate(ids)])
        con.execute("INSERT INTO ratings VALUES (?, ?, ?, ?, ?)", (cur.lastrowid, ids[0], score, "t", "t"))
    con.close()


def test_report_and_csv_escape_hostile_rater_names(study, tmp_path):
    from pathup.study.report import build_report, format_report, ratings_csv

    for i, name in enumerate(HOSTILE):
        _add_raw_rater(study, name, 1 + i)
    rows = list(csv.reader(io.StringIO(ratings_csv(study))))[1:]
    raters = [r[0] for r in rows]
    for cell in raters:
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    assert "'=HYPERLINK(\"http://x\",\"y\")" in raters and "'+1+2" in raters and "'-3" in raters
    assert "'@SUM(A1)" in raters and "'\tTab" in raters and "a|b" in raters
    text = format_report(build_report(study))
    assert "\x1b" not in text and "\t" not in text
    table = [ln for ln in text.splitlines() if ln.startswith("| ") and "Tab" in ln or "a\\|b" in ln]
    assert any("a\\|b" in ln for ln in table)
    for ln in text.splitlines():
        if ln.startswith("|") and ("Red" in ln or "break" in ln or "a\\|b" in ln):
            assert ln.count("|") - ln.count("\\|") == 6, ln  # five columns: the table holds together
    assert not any(ln.startswith("break") for ln in text.splitlines())


def test_add_rater_refuses_control_characters(study, capsys):
    with pytest.raises(PathUpError, match="control"):
        study.add_rater("\x1b[2JEvil")
    from pathup.cli import main

    assert main(["study", "add-rater", "bad\x07name", str(study.path)]) == 2
    err = capsys.readouterr().err
    assert "\x07" not in err and err.count("\n") == 1


# ------------------------------------------------------------------------------ the answer key is private
def test_study_db_is_created_0600(tmp_path, synthetic_dir):
    old = os.umask(0o022)
    try:
        db = create_study(breakhis_dir(), synthetic_dir, 1, tmp_path / "p.db", seed=0, size=64)
        db.add_rater("A")
    finally:
        os.umask(old)
    assert db.path.stat().st_mode & 0o777 == 0o600
    for suffix in ("-wal", "-shm"):
        side = db.path.with_name(db.path.name + suffix)
        if side.exists():
            assert side.stat().st_mode & 0o077 == 0, side
    assert (db.files_dir.stat().st_mode & 0o777) == 0o755  # the images themselves carry no answer


# ------------------------------------------------------------------------------ unwritable output
def test_study_create_unwritable_out_is_one_line(tmp_path, synthetic_dir, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(PathUpError) as e:
        create_study(breakhis_dir(), synthetic_dir, 1, blocker / "study.db", size=64)
    assert "\n" not in str(e.value) and str(blocker) in str(e.value)
    from pathup.cli import main

    rc = main(["study", "create", "--real", str(breakhis_dir()), "--synthetic", str(synthetic_dir),
               "--per-class", "1", "--size", "64", "--out", str(blocker / "study.db")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and str(blocker) in err and "re-encoding" not in err
