"""Shared test configuration: deterministic seeds and a fixed, small thread count."""

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
