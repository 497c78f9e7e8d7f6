"""The blinded rater study (paper Table 5): pathologists score images 1 (synthetic) .. 10 (real).

``create`` picks and blindly re-encodes real and synthetic images into a study database, ``app`` is
the web app the raters use, ``report`` computes Table 5, per-rater means and inter-rater agreement.
The web app needs the ``study`` extra (FastAPI, uvicorn); the rest needs only the core dependencies.
"""

from pathup.study.create import StudyCreateConfig, create_study
from pathup.study.db import StudyDB
from pathup.study.report import build_report, format_report, krippendorff_alpha_interval, write_csv

__all__ = ["StudyCreateConfig", "StudyDB", "build_report", "create_study", "format_report",
           "krippendorff_alpha_interval", "write_csv"]
