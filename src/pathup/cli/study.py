"""``pathup study``: the blinded rater study of the paper's Table 5.

  pathup study create --real DIR --synthetic DIR --per-class 10 --out study.db
  pathup study add-rater NAME study.db [--url http://host:port]
  pathup study serve study.db [--host 127.0.0.1] [--port 8000]
  pathup study close study.db            (and 'reopen')
  pathup study report study.db [--csv ratings.csv]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from pathup.config import add_config_args
    from pathup.study.create import StudyCreateConfig

    parser = subparsers.add_parser(
        "study", help="blinded rater study: create, add raters, serve the web app, report Table 5",
        description="Pathologists score images 1 (synthetic) to 10 (real) without knowing which is which.")
    sub = parser.add_subparsers(dest="study_command", metavar="ACTION")

    p = sub.add_parser("create", help="pick and blindly re-encode real and synthetic images into a study",
                       description="Pick --per-class real and synthetic images per class, re-encode them "
                                   "identically under random names, and write the study database.")
    add_config_args(p, StudyCreateConfig)
    p.set_defaults(func=run_create)

    p = sub.add_parser("add-rater", help="register a rater and print their secret token and link")
    p.add_argument("name", help="the rater's name (shown only to the organiser and in the report)")
    p.add_argument("db", type=Path, help="study database")
    p.add_argument("--url", default="http://127.0.0.1:8000",
                   help="address where the study is served, for the printed link (default: %(default)s)")
    p.add_argument("--reset-token", action="store_true",
                   help="issue a new token for an existing rater (their ratings are kept)")
    p.set_defaults(func=run_add_rater)

    p = sub.add_parser("serve", help="start the rating web app")
    p.add_argument("db", type=Path, help="study database")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: %(default)s; use a public one only behind HTTPS)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.set_defaults(func=run_serve)

    for name, state, text in (("close", "closed", "close the study: scores become final"),
                              ("reopen", "open", "reopen a closed study")):
        p = sub.add_parser(name, help=text)
        p.add_argument("db", type=Path, help="study database")
        p.set_defaults(func=run_state, new_state=state)

    p = sub.add_parser("report", help="Table 5, per-rater means, inter-rater agreement, CSV export")
    p.add_argument("db", type=Path, help="study database")
    p.add_argument("--csv", type=Path, metavar="PATH", help="also write every rating to this CSV file")
    p.set_defaults(func=run_report)

    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def run_create(args: argparse.Namespace) -> int:
    from pathup.config import config_from_args, save_config
    from pathup.study.create import StudyCreateConfig, create_study

    cfg = config_from_args(StudyCreateConfig, args)
    db = create_study(cfg.real, cfg.synthetic, cfg.per_class, cfg.out, cfg.seed, size=cfg.size,
                      fmt=cfg.format, quality=cfg.quality, classes=cfg.classes)
    config_path = save_config(cfg, cfg.out.with_name(cfg.out.stem + "_config.yaml"))
    print(f"study: {len(db.images())} images in {cfg.out} and {db.files_dir}/ (config: {config_path})")
    print(f"next: pathup study add-rater NAME {cfg.out}")
    return 0


def run_add_rater(args: argparse.Namespace) -> int:
    from pathup.study.db import StudyDB

    db = StudyDB(args.db)
    token = db.add_rater(args.name, reset_token=args.reset_token)
    url = args.url.rstrip("/")
    print(f"rater: {args.name.strip()}")
    print(f"token: {token}")
    print(f"link:  {url}/#token={token}")
    print("Give the token or link to this rater only; it is stored hashed and cannot be shown again.")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from pathup.study.app import serve
    from pathup.study.db import StudyDB

    db = StudyDB(args.db)
    print(f"study {args.db}: {len(db.images())} images, {len(db.raters())} raters, state {db.state}; "
          f"open http://{args.host}:{args.port}/ (Ctrl+C stops)")
    serve(args.db, host=args.host, port=args.port)
    return 0


def run_state(args: argparse.Namespace) -> int:
    from pathup.study.db import StudyDB

    db = StudyDB(args.db)
    db.set_state(args.new_state)
    print(f"study {args.db} is now {args.new_state}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from pathup.study.db import StudyDB
    from pathup.study.report import build_report, format_report, write_csv

    db = StudyDB(args.db)
    print(format_report(build_report(db)), end="")
    if args.csv:
        print(f"\nratings written to {write_csv(db, args.csv)}")
    return 0
