"""Backbones (one file per family) behind one ``create_model`` API."""

# Importing the family modules registers their models.
from . import glnet, resnet, swin  # noqa: F401  (registers the models)
from ._builder import adapt_input_conv, create_model, load_checkpoint, read_state_dict
from ._features import FeatureInfo, FeatureListNet
from ._registry import get_pretrained_cfg, is_model, list_models, model_entrypoint, register_model
from ._serialization import convert_official, read_model_info, save_model

__all__ = [
    "FeatureInfo",
    "FeatureListNet",
    "adapt_input_conv",
    "convert_official",
    "create_model",
    "get_pretrained_cfg",
    "is_model",
    "list_models",
    "load_checkpoint",
    "model_entrypoint",
    "read_model_info",
    "read_state_dict",
    "register_model",
    "save_model",
]
