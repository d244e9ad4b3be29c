import os
import random

# Without a GPU, Triton kernels run in its interpreter (on CPU tensors). The switch is read
# when a kernel is decorated, i.e. when shiftnas.kernels modules are imported: set it first.
try:
    import torch as _torch

    if not _torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass

import pytest
import torch

# Tests compare numbers: keep them deterministic and the 2-core machine responsive. Under
# pytest-xdist (`make test` runs one worker per core) each worker and the processes it spawns
# get one thread, so workers do not oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def rng():
    return random.Random(0)


@pytest.fixture
def one_thread():
    """torch on one thread for the test, as the train.py subprocesses run (OMP_NUM_THREADS=1): 2
    threads on a busy 2-core machine measured 10-20x slower per run (11 s vs 2.5 s for 8 steps)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
