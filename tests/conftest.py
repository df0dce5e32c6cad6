"""Shared test configuration: deterministic seeds and one intra-op thread.

Test shapes are tiny, so threads only add OpenMP synchronisation; with one thread the suite is
faster and its timings do not depend on other load on the machine.
"""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
