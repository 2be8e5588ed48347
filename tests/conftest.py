from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # NOTE: the end-to-end tests compare runs bit for bit; keep torch's thread count fixed.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
