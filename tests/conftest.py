import os

import pytest

# Keep the default suite light on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_sessionstart(session):
    import torch

    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def sample_breakhis():
    from pathup.sample_data import breakhis_dir

    return breakhis_dir()


@pytest.fixture(scope="session")
def sample_wsi():
    from pathup.sample_data import wsi_path

    return wsi_path()
