from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # NOTE: the end-to-end tests compare runs bit for bit; keep torch's thread count fixed.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _tracking_store_outside_the_checkout(tmp_path_factory):
    """Studies in tests log to a throwaway SQLite store, never to mlflow.db in the working directory."""
    import os

    if "MLFLOW_TRACKING_URI" not in os.environ:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    yield
