"""Stage tests train tiny models in-process."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second torch thread, and on a busy machine its spinning costs several x."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
