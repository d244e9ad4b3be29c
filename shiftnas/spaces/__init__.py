"""Search spaces: `get_space(name)`, `ArchConfig`, and the registered spaces."""
from .base import ArchConfig, Decision, SearchSpace, get_space, list_spaces, register_space
from . import cnn as _cnn  # noqa: F401  (registers cnn-bignas, cnn-fmnist)
from . import vit as _vit  # noqa: F401  (registers autoformer-t/s/b, vit-fmnist)

__all__ = ["ArchConfig", "Decision", "SearchSpace", "get_space", "list_spaces", "register_space"]
