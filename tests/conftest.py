import os

import pytest

# Keep the default suite light on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_sessionstart(session):
    import torch

    # The tests use tiny models: one thread is as fast as two for them, and on a busy 2-core machine
    # two OpenMP threads per process made them up to 15x slower (oversubscription).
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sample_breakhis():
    from pathup.sample_data import breakhis_dir

    return breakhis_dir()


@pytest.fixture(scope="session")
def sample_wsi():
    from pathup.sample_data import wsi_path

    return wsi_path()


@pytest.fixture
def validate_calls(monkeypatch):
    """The config type of every run of ``pathup.sample.config.validate`` during the test (the tests that count
    how often a command or API call checks its options)."""
    import sys

    import pathup.config

    real, calls = pathup.config.validate, []

    def counting(cfg):  # every run of pathup.sample.config.validate checks the fields here once
        if sys._getframe(1).f_globals["__name__"] == "pathup.sample.config":
            calls.append(type(cfg).__name__)
        return real(cfg)

    monkeypatch.setattr(pathup.config, "validate", counting)
    return calls
