import os
import random

import pytest
import torch

# Tests compare numbers: keep them deterministic and the 2-core machine responsive.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def rng():
    return random.Random(0)
