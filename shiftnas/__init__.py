"""ShiftNAS: one-shot NAS with a probability shift over FLOPs bins and an architecture generator.

Public API::

    space = shiftnas.get_space("vit-fmnist"); arch = space.sample(random.Random(0))
    net = shiftnas.build_supernet("vit-fmnist", num_classes=10); logits = net(x, arch)
    shiftnas.count_flops(space, arch); shiftnas.count_params(space, arch)
    sub = shiftnas.export_subnet(net, arch); shiftnas.save_subnet(sub, arch, path)
    sub2 = shiftnas.load_subnet(path)

`import shiftnas` imports neither torch nor timm: each name below is imported on first use
(PEP 562), and the supernets register with timm (`timm.create_model("shiftnas_vit_fmnist_supernet")`)
as soon as timm is imported, before or after shiftnas.
"""
from ._lazy import lazy_exports, when_imported

__version__ = "0.1.0"  # the fallback of `shiftnas --version` when no package metadata is installed

_EXPORTS = {  # submodule -> the public names it defines
    ".cost": ("CostBins", "FlopsBins", "count_flops", "count_params", "expected_cost",
              "flops_range", "get_cost"),
    ".generator": ("ArchGenerator",),
    ".models.export": ("export_subnet", "load_subnet", "save_subnet"),
    ".models.registry": ("build_supernet",),
    ".spaces": ("ArchConfig", "SearchSpace", "get_space", "list_spaces"),
    ".spaces.arch_sample": ("ArchSample",),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


def _register_with_timm() -> None:
    import importlib

    for module in (".models.vit", ".models.mbconv"):  # they decorate the supernets with timm's register_model
        importlib.import_module(module, __name__)


when_imported("timm", _register_with_timm)
