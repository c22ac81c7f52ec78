"""Unit tests run torch on one thread, like a rank does by default (hardware.threads=1): tiny models
only gain contention from more threads on a shared CPU, and bit-exact comparisons need a fixed count."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
