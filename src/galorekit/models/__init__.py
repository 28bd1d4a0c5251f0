"""Models: the paper's LLaMA configs and other families (GPT-2, ViT, a small CNN), built from
random init (``device="meta"`` included), and the target-module resolver."""

from galorekit.models.build import build_model, count_parameters, resolve_dtype
from galorekit.models.config import model_config
from galorekit.models.registry import NAMED_SHAPES, LlamaShape, list_models
from galorekit.models.targets import default_target_modules, linear_shape

__all__ = [
    "NAMED_SHAPES",
    "LlamaShape",
    "build_model",
    "count_parameters",
    "default_target_modules",
    "linear_shape",
    "list_models",
    "model_config",
    "resolve_dtype",
]
