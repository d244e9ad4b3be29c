"""Elastic modules: max-size weights, active sub-network passed as an argument."""
from .attention import ElasticAttention
from .batch_norm import ElasticBatchNorm2d
from .conv import ElasticConv2d, ElasticDWConv2d
from .layer_norm import ElasticLayerNorm
from .linear import ElasticLinear
from .mlp import ElasticMLP
from .patch_embed import ElasticPatchEmbed
from .se import ElasticSE

__all__ = [
    "ElasticAttention",
    "ElasticBatchNorm2d",
    "ElasticConv2d",
    "ElasticDWConv2d",
    "ElasticLayerNorm",
    "ElasticLinear",
    "ElasticMLP",
    "ElasticPatchEmbed",
    "ElasticSE",
]
