"""ShiftNAS: one-shot NAS with a probability shift over FLOPs bins and an architecture generator.

Public API::

    space = shiftnas.get_space("vit-fmnist"); arch = space.sample(random.Random(0))
    net = shiftnas.build_supernet("vit-fmnist", num_classes=10); logits = net(x, arch)
    shiftnas.count_flops(space, arch); shiftnas.count_params(space, arch)
    sub = shiftnas.export_subnet(net, arch); shiftnas.save_subnet(sub, arch, path)
    sub2 = shiftnas.load_subnet(path)
"""
from .generator import ArchGenerator
from .cost import FlopsBins, count_flops, count_params, expected_cost, flops_range
from .models.export import export_subnet, load_subnet, save_subnet
from .models.registry import build_supernet
from .spaces import ArchConfig, SearchSpace, get_space, list_spaces
from .spaces.arch_sample import ArchSample

__version__ = "0.1.0"

__all__ = [
    "ArchConfig",
    "ArchGenerator",
    "ArchSample",
    "FlopsBins",
    "SearchSpace",
    "build_supernet",
    "count_flops",
    "count_params",
    "expected_cost",
    "export_subnet",
    "flops_range",
    "get_space",
    "list_spaces",
    "load_subnet",
    "save_subnet",
]
