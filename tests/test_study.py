"""Rater study: blinded creation, the JSON API (auth, validation, isolation, closing, restart,
concurrency against a real uvicorn server) and the CLI."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathup.errors import PathUpError
from pathup.io import load_rgb
from pathup.sample_data import breakhis_dir
from pathup.study.create import class_images, create_study, square_resize
from pathup.study.db import StudyDB
from study_util import PER_CLASS, auth, client, copy_study, live_server, make_synthetic_dir, study, synthetic_dir, template_db  # noqa: F401 - fixtures

CLASSES = ["ductal_carcinoma", "fibroadenoma", "mucinous_carcinoma", "papillary_carcinoma"]
N_IMAGES = len(CLASSES) * PER_CLASS * 2


# ---------------------------------------------------------------------------------------- creation
def test_create_picks_per_class_and_blinds_everything(study, synthetic_dir):
    images = study.images()
    assert len(images) == N_IMAGES
    for cls in CLASSES:
        real = [im for im in images if im.cls == cls and im.is_real]
        synth = [im for im in images if im.cls == cls and not im.is_real]
        assert len(real) == len(synth) == PER_CLASS
        assert all(Path(im.source).parent.name == cls for im in real + synth)
        assert all(Path(im.source).parent == (synthetic_dir / cls).resolve() for im in synth)
    assert not any("overview" in im.source for im in images)

    files = [study.files_dir / im.file for im in images]
    assert sorted(p.name for p in study.files_dir.iterdir()) == sorted(p.name for p in files)
    # Same byte length, same modification time, same format, size and header info for all.
    assert len({p.stat().st_size for p in files}) == 1
    assert len({p.stat().st_mtime for p in files}) == 1
    infos = set()
    for p in files:
        with Image.open(p) as im:
            im.load()
            assert (im.format, im.size, im.mode) == ("JPEG", (128, 128), "RGB")
            assert not {"exif", "icc_profile", "comment", "xmp"} & set(im.info)
            infos.add(repr(sorted(im.info.items())))
    assert len(infos) == 1
    # Names and ids are random hex that does not carry the source name or class.
    for im in images:
        assert len(im.id) == 24 and int(im.id, 16) >= 0
        stem = Path(im.file).stem
        assert len(stem) == 32 and int(stem, 16) >= 0
        assert Path(im.source).stem not in im.file and im.cls not in im.file


def test_create_keeps_pixels(tmp_path, synthetic_dir):
    db = create_study(breakhis_dir(), synthetic_dir, 1, tmp_path / "p.db", seed=0, size=96, fmt="png")
    for im in db.images():
        stored = np.asarray(load_rgb(db.files_dir / im.file))
        expected = np.asarray(square_resize(load_rgb(im.source), 96))
        np.testing.assert_array_equal(stored, expected)  # PNG: lossless, padding ignored by the decoder
    sizes = {(db.files_dir / im.file).stat().st_size for im in db.images()}
    assert len(sizes) == 1


def test_create_is_seeded(tmp_path, synthetic_dir):
    def sources(seed, name):
        db = create_study(breakhis_dir(), synthetic_dir, PER_CLASS, tmp_path / name, seed=seed, size=64)
        return sorted(im.source for im in db.images())

    assert sources(1, "a.db") == sources(1, "b.db")
    assert sources(1, "a2.db") != sources(2, "c.db")
    real_all = {str(p.resolve()) for c in CLASSES for p in class_images(breakhis_dir() / c)}
    assert {s for s in sources(5, "d.db") if "breakhis" in s} <= real_all


def test_create_errors_and_never_overwrites(tmp_path, synthetic_dir, template_db):
    with pytest.raises(PathUpError, match="has 6 images; --per-class 7"):
        create_study(breakhis_dir(), synthetic_dir, 7, tmp_path / "x.db")
    with pytest.raises(PathUpError, match="already exists"):
        create_study(breakhis_dir(), synthetic_dir, 1, template_db)
    with pytest.raises(PathUpError, match="--real: folder not found"):
        create_study(tmp_path / "nope", synthetic_dir, 1, tmp_path / "y.db")
    (tmp_path / "syn2" / "other_class").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "syn2" / "other_class" / "a.png")
    with pytest.raises(PathUpError, match="differ from synthetic classes"):
        create_study(breakhis_dir(), tmp_path / "syn2", 1, tmp_path / "z.db")
    with pytest.raises(PathUpError, match=r"classes: no image folder for other_class \(real\)"):
        create_study(breakhis_dir(), tmp_path / "syn2", 1, tmp_path / "z.db", classes=["other_class"])
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "z.db").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    StudyDB(template_db)  # still a valid study


def test_db_is_wal_and_tokens_are_hashed(study):
    token = study.add_rater("Dr Who")
    raw = study.path.read_bytes() + (study.path.with_name(study.path.name + "-wal").read_bytes()
                                     if study.path.with_name(study.path.name + "-wal").exists() else b"")
    assert token.encode() not in raw
    con = sqlite3.connect(study.path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT token_hash FROM raters").fetchone()[0] == hashlib.sha256(token.encode()).hexdigest()
    con.close()
    assert study.rater_for_token(token).name == "Dr Who"
    assert study.rater_for_token(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    with pytest.raises(PathUpError, match="already exists"):
        study.add_rater("Dr Who")
    new = study.add_rater("Dr Who", reset_token=True)
    assert study.rater_for_token(token) is None and study.rater_for_token(new).name == "Dr Who"


# ---------------------------------------------------------------------------------------- API
def test_every_api_route_needs_a_valid_token(client, study):
    token = study.add_rater("A")
    image_id = study.images()[0].id
    routes = [("GET", "/api/next"), ("GET", "/api/progress"), ("GET", "/api/queue"), ("GET", "/api/my-ratings"),
              ("GET", f"/api/images/{image_id}"), ("POST", "/api/rating"), ("GET", "/api/does-not-exist")]
    bad_headers = [{}, auth("wrong"), auth(""), {"Authorization": f"Basic {token}"}, {"Authorization": token}]
    for method, path in routes:
        for headers in bad_headers:
            r = client.request(method, path, headers=headers, json={"image_id": image_id, "score": 5})
            assert r.status_code == 401, (method, path, headers)
            assert r.headers["www-authenticate"] == "Bearer"
            assert "token" in r.json()["detail"]
    assert study.all_ratings() == []
    assert client.get("/api/next", headers=auth(token)).status_code == 200
    assert client.get("/").status_code == 200 and "rater study" in client.get("/").text
    assert client.get("/static/app.js").status_code == 200


def test_validation_messages(client, study):
    token = study.add_rater("A")
    image_id = client.get("/api/next", headers=auth(token)).json()["image_id"]
    for bad in (0, 11, -3, 5.5, "5", True, None):
        r = client.post("/api/rating", headers=auth(token), json={"image_id": image_id, "score": bad})
        assert r.status_code == 422, bad
        assert "score must be a whole number from 1 (synthetic) to 10 (real)" in r.json()["detail"]
    r = client.post("/api/rating", headers=auth(token), json={"image_id": image_id})
    assert r.status_code == 422 and "score must be" in r.json()["detail"]
    r = client.post("/api/rating", headers={**auth(token), "Content-Type": "application/json"},
                    content=b"{not json")
    assert r.status_code == 422 and "expected a JSON body" in r.json()["detail"]
    r = client.post("/api/rating", headers=auth(token), json={"image_id": "0" * 24, "score": 5})
    assert r.status_code == 404 and r.json()["detail"] == "unknown image id '000000000000000000000000'"
    r = client.get("/api/images/" + "f" * 24, headers=auth(token))
    assert r.status_code == 404 and "unknown image id" in r.json()["detail"]
    assert study.all_ratings() == []


def test_api_reveals_nothing_about_the_source(client, study):
    token = study.add_rater("A")
    queue = client.get("/api/queue", headers=auth(token)).json()["items"]
    nxt = client.get("/api/next", headers=auth(token)).json()
    assert set(queue[0]) == {"image_id", "position", "score"}
    assert not {"class", "cls", "is_real", "source", "file"} & set(nxt)
    truth = {im.id: im.is_real for im in study.images()}
    real_id = next(i for i, r in truth.items() if r)
    synth_id = next(i for i, r in truth.items() if not r)
    headers = []
    for image_id in (real_id, synth_id):
        r = client.get(f"/api/images/{image_id}", headers=auth(token))
        assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"
        headers.append({k: v for k, v in r.headers.items() if k != "date"})
    assert headers[0] == headers[1]
    assert "etag" not in headers[0] and "last-modified" not in headers[0]


def test_flow_upsert_isolation_and_resume(client, study):
    ta, tb = study.add_rater("A"), study.add_rater("B")
    qa = [q["image_id"] for q in client.get("/api/queue", headers=auth(ta)).json()["items"]]
    qb = [q["image_id"] for q in client.get("/api/queue", headers=auth(tb)).json()["items"]]
    assert sorted(qa) == sorted(qb) == sorted(im.id for im in study.images())
    assert qa != qb  # each rater has an own random order (equal with probability 1/16!)

    for k, image_id in enumerate(qa[:5]):
        nxt = client.get("/api/next", headers=auth(ta)).json()
        assert (nxt["image_id"], nxt["position"], nxt["rated"]) == (image_id, k + 1, k)
        r = client.post("/api/rating", headers=auth(ta), json={"image_id": image_id, "score": k + 3})
        assert r.status_code == 200 and r.json()["rated"] == k + 1
    # Change a score: still one row per rater and image.
    r = client.post("/api/rating", headers=auth(ta), json={"image_id": qa[0], "score": 10})
    assert r.status_code == 200 and r.json()["rated"] == 5
    mine = client.get("/api/my-ratings", headers=auth(ta)).json()["ratings"]
    assert [(m["image_id"], m["score"]) for m in mine] == [(qa[0], 10)] + [(qa[k], k + 3) for k in range(1, 5)]
    assert len(study.all_ratings()) == 5
    # B sees none of A's scores, and resumes at their own first image.
    assert client.get("/api/my-ratings", headers=auth(tb)).json()["ratings"] == []
    assert all(q["score"] is None for q in client.get("/api/queue", headers=auth(tb)).json()["items"])
    assert client.get("/api/next", headers=auth(tb)).json()["position"] == 1
    # Resume for A at the sixth image.
    assert client.get("/api/next", headers=auth(ta)).json()["position"] == 6
    assert client.get("/api/progress", headers=auth(ta)).json() == {"name": "A", "state": "open", "rated": 5,
                                                                   "total": N_IMAGES}


def test_closing_freezes_and_restart_keeps_everything(client, study):
    from fastapi.testclient import TestClient

    from pathup.study.app import create_app

    token = study.add_rater("A")
    first = client.get("/api/next", headers=auth(token)).json()["image_id"]
    assert client.post("/api/rating", headers=auth(token), json={"image_id": first, "score": 4}).status_code == 200
    study.set_state("closed")  # e.g. 'pathup study close' from another process while serving
    r = client.post("/api/rating", headers=auth(token), json={"image_id": first, "score": 9})
    assert r.status_code == 409 and "closed" in r.json()["detail"]
    second = client.get("/api/next", headers=auth(token)).json()
    assert second["state"] == "closed"
    r = client.post("/api/rating", headers=auth(token), json={"image_id": second["image_id"], "score": 2})
    assert r.status_code == 409
    assert [(r.image_id, r.score) for r in study.all_ratings()] == [(first, 4)]

    with TestClient(create_app(study.path)) as restarted:  # a new server process on the same files
        assert restarted.get("/api/my-ratings", headers=auth(token)).json()["ratings"][0]["score"] == 4
        assert restarted.get("/api/next", headers=auth(token)).json()["position"] == 2
        study.set_state("open")
        r = restarted.post("/api/rating", headers=auth(token), json={"image_id": first, "score": 9})
        assert r.status_code == 200
    assert [(r.image_id, r.score) for r in study.all_ratings()] == [(first, 9)]


def test_parameterised_sql_survives_hostile_names(client, study):
    name = "Robert'); DROP TABLE ratings;--"
    token = study.add_rater(name)
    image_id = client.get("/api/next", headers=auth(token)).json()["image_id"]
    assert client.post("/api/rating", headers=auth(token), json={"image_id": image_id, "score": 7}).status_code == 200
    r = client.get("/api/images/x' OR '1'='1", headers=auth(token))
    assert r.status_code == 404
    assert [(r.rater, r.score) for r in study.all_ratings()] == [(name, 7)]


# ---------------------------------------------------------------------------------------- live server
def test_fifty_raters_at_once_lose_nothing_and_restart(study):
    import httpx

    n_raters, per_rater, changed = 50, 4, 1
    tokens = [study.add_rater(f"rater {i:02d}") for i in range(n_raters)]
    ids = [im.id for im in study.images()]
    errors: list[str] = []
    barrier = threading.Barrier(n_raters)

    def image_of(i: int, j: int) -> str:
        return ids[(i + j) % len(ids)]

    def score_of(i: int, j: int) -> int:
        return (i * 7 + j * 3) % 10 + 1

    with live_server(study.path) as url:
        def work(i: int) -> None:
            with httpx.Client(base_url=url, headers=auth(tokens[i]), timeout=60) as c:
                barrier.wait()
                for j in range(per_rater):
                    r = c.post("/api/rating", json={"image_id": image_of(i, j), "score": 11 - score_of(i, j)})
                    if r.status_code != 200:
                        errors.append(f"{i} {j} {r.status_code} {r.text}")
                for j in range(changed):  # change scores while other raters still write
                    r = c.post("/api/rating", json={"image_id": image_of(i, j), "score": score_of(i, j)})
                    if r.status_code != 200:
                        errors.append(f"{i} {j} {r.status_code} {r.text}")

        threads = [threading.Thread(target=work, args=(i,)) for i in range(n_raters)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors[:5]

    expected = {(f"rater {i:02d}", image_of(i, j)): (score_of(i, j) if j < changed else 11 - score_of(i, j))
                for i in range(n_raters) for j in range(per_rater)}
    got = {(r.rater, r.image_id): r.score for r in study.all_ratings()}
    assert len(got) == n_raters * per_rater
    assert got == expected  # one row per rater and image, each with its last score

    with live_server(study.path) as url:  # restarted server: everything is still there
        with httpx.Client(base_url=url, headers=auth(tokens[3])) as c:
            mine = c.get("/api/my-ratings").json()["ratings"]
            assert {m["image_id"]: m["score"] for m in mine} == {k[1]: v for k, v in expected.items()
                                                                 if k[0] == "rater 03"}
            assert c.get("/api/progress").json()["rated"] == per_rater


def test_close_during_concurrent_rating_is_all_or_nothing(study):
    import httpx

    tokens = [study.add_rater(f"r{i}") for i in range(10)]
    ids = [im.id for im in study.images()]
    acked: dict[tuple[int, str], int] = {}
    statuses: list[int] = []
    lock = threading.Lock()

    with live_server(study.path) as url:
        def work(i: int) -> None:
            with httpx.Client(base_url=url, headers=auth(tokens[i]), timeout=60) as c:
                for j, image_id in enumerate(ids):
                    r = c.post("/api/rating", json={"image_id": image_id, "score": (i + j) % 10 + 1})
                    with lock:
                        statuses.append(r.status_code)
                        if r.status_code == 200:
                            acked[(i, image_id)] = (i + j) % 10 + 1

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(tokens))]
        for t in threads:
            t.start()
        while len(statuses) < 40:
            threading.Event().wait(0.005)
        study.set_state("closed")
        for t in threads:
            t.join(60)

    assert set(statuses) <= {200, 409} and 409 in statuses and 200 in statuses
    names = {f"r{i}": i for i in range(len(tokens))}
    stored = {(names[r.rater], r.image_id): r.score for r in study.all_ratings()}
    assert stored == acked  # every acknowledged rating stored, no refused one


# ---------------------------------------------------------------------------------------- CLI
def test_cli_create_add_rater_close_report(tmp_path, synthetic_dir, capsys):
    from pathup.cli import main

    db = tmp_path / "cli" / "study.db"
    assert main(["study", "create", "--real", str(breakhis_dir()), "--synthetic", str(synthetic_dir),
                 "--per-class", "1", "--size", "64", "--out", str(db)]) == 0
    assert (tmp_path / "cli" / "study_config.yaml").is_file() and (tmp_path / "cli" / "study_files").is_dir()
    capsys.readouterr()
    assert main(["study", "add-rater", "Dr A", str(db), "--url", "http://127.0.0.1:9000"]) == 0
    out = capsys.readouterr().out
    token = next(line.split()[1] for line in out.splitlines() if line.startswith("token:"))
    assert f"http://127.0.0.1:9000/#token={token}" in out
    s = StudyDB(db)
    rater = s.rater_for_token(token)
    for k, q in enumerate(s.queue(rater.id)):
        s.rate(rater.id, q["image_id"], 1 + k)
    assert main(["study", "close", str(db)]) == 0 and s.state == "closed"
    assert main(["study", "report", str(db), "--csv", str(tmp_path / "r.csv")]) == 0
    out = capsys.readouterr().out
    assert "Table 5" in out and "| fibroadenoma |" in out and "state: closed" in out
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 1 + 8
    # User errors: one line, exit status 2.
    assert main(["study", "report", str(tmp_path / "missing.db")]) == 2
    assert main(["study", "add-rater", "Dr A", str(db)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("pathup study: error: study database not found")
    assert err[1].startswith("pathup study: error: rater 'Dr A' already exists")
