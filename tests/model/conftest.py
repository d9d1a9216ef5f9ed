import pytest

from ettin_megatron.runtime import initialize


@pytest.fixture(scope="session", autouse=True)
def single_rank_world():
    """Model tests run in a gloo world of one with TP = PP = 1 (multi-rank tests spawn their own)."""
    initialize()
    yield
