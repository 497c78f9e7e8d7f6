"""End-to-end test of the rating page in headless Chromium (Debian's /usr/bin/chromium via Playwright):
sign in, rate five images, reload, resume at the sixth; zoom, pan, change a score, sign out."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pathup.sample_data import breakhis_dir
from pathup.study.create import create_study
from study_util import live_server, make_synthetic_dir

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium "
                                                     "(apt-get install chromium; .ci/run installs it)"),
]


def test_sign_in_rate_five_reload_resume_at_sixth(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    size = 256
    db = create_study(breakhis_dir(), make_synthetic_dir(tmp_path / "syn", per_class=2), 2, tmp_path / "study.db",
                      seed=0, size=size)
    token = db.add_rater("Dr Browser")
    rater = db.rater_for_token(token)
    order = [q["image_id"] for q in db.queue(rater.id)]
    total = len(order)
    scores = [3, 8, 1, 10, 6]
    problems: list[str] = []

    with live_server(db.path) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(15_000)
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(url + "/")

            # A wrong token is refused with a message; the right one signs in.
            expect(page.locator("#signin")).to_be_visible()
            page.fill("#token", "not-a-token")
            page.click("#signin-button")
            expect(page.locator("#signin-error")).to_contain_text("token was not accepted")
            problems.clear()  # the 401 above is logged by Chromium as a failed resource load
            page.fill("#token", token)
            page.click("#signin-button")
            expect(page.locator("#who")).to_have_text("Dr Browser")

            image = page.locator("#image")
            for k, score in enumerate(scores):
                expect(page.locator("#position")).to_have_text(f"Image {k + 1} of {total}")
                expect(image).to_have_attribute("data-image-id", order[k])
                assert image.evaluate("img => img.naturalWidth") == size
                page.click(f"#scores button[data-score='{score}']")
                expect(page.locator("#progress")).to_have_text(f"{k + 1} of {total} rated")
            expect(page.locator("#position")).to_have_text(f"Image 6 of {total}")
            assert {(r.image_id, r.score) for r in db.all_ratings()} == set(zip(order[:5], scores))

            # Zoom with the wheel around the cursor, then pan by dragging.
            expect(image).to_have_attribute("data-image-id", order[5])
            fit = int(page.inner_text("#zoom-level").rstrip("%"))
            box = page.locator("#viewer").bounding_box()
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(cx, cy)
            page.mouse.wheel(0, -400)
            expect(page.locator("#zoom-level")).not_to_have_text(f"{fit}%")
            assert int(page.inner_text("#zoom-level").rstrip("%")) > fit
            before = image.evaluate("img => img.style.transform")
            page.mouse.down()
            page.mouse.move(cx + 120, cy + 60, steps=4)
            page.mouse.up()
            after = image.evaluate("img => img.style.transform")
            tx = [float(v) for v in re.findall(r"translate\(([-\d.]+)px, ?([-\d.]+)px\)", before)[0]]
            tx2 = [float(v) for v in re.findall(r"translate\(([-\d.]+)px, ?([-\d.]+)px\)", after)[0]]
            assert tx2[0] - tx[0] == pytest.approx(120, abs=1) and tx2[1] - tx[1] == pytest.approx(60, abs=1)
            page.dblclick("#viewer")
            expect(page.locator("#zoom-level")).to_have_text(f"{fit}%")

            shot = tmp_path / "study.png"
            page.screenshot(path=str(shot))
            if os.environ.get("PATHUP_STUDY_SCREENSHOT"):
                Path(os.environ["PATHUP_STUDY_SCREENSHOT"]).write_bytes(shot.read_bytes())

            # Reload: the saved sign-in resumes at the sixth image.
            page.reload()
            expect(page.locator("#position")).to_have_text(f"Image 6 of {total}")
            expect(image).to_have_attribute("data-image-id", order[5])
            expect(page.locator("#progress")).to_have_text(f"5 of {total} rated")

            # Go back and change the fifth score; the page then returns to the first unrated image.
            page.click("#prev")
            expect(page.locator("#position")).to_have_text(f"Image 5 of {total}")
            expect(page.locator("#current-score")).to_have_text("Your score: 6")
            expect(page.locator("#scores button[data-score='6']")).to_have_class("selected")
            page.keyboard.press("2")
            expect(page.locator("#position")).to_have_text(f"Image 6 of {total}")
            assert dict((r.image_id, r.score) for r in db.all_ratings())[order[4]] == 2

            # Closing the study freezes the page's buttons after the next refusal or reload.
            db.set_state("closed")
            page.click("#scores button[data-score='5']")
            expect(page.locator("#banner")).to_contain_text("The study is closed")
            expect(page.locator("#scores button[data-score='5']")).to_be_disabled()
            assert len(db.all_ratings()) == 5

            page.click("#signout")
            expect(page.locator("#signin")).to_be_visible()
            page.reload()
            expect(page.locator("#signin")).to_be_visible()  # signing out forgets the token
        finally:
            browser.close()
    problems = [m for m in problems if "status of 409" not in m]  # the refused rating after closing
    assert not problems, problems
