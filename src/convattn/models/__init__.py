"""Backbones (one file per family) behind one ``create_model`` API."""

# Importing the family modules registers their models.
from . import glnet, pvt, resnet, san, swin  # noqa: F401  (registers the models)
from ._builder import adapt_input_conv, create_model, load_checkpoint, read_state_dict
from ._features import FeatureInfo, FeatureListNet
from ._init_from import InitReport, init_from_pretrained
from ._registry import get_pretrained_cfg, is_model, list_models, model_entrypoint, register_model
from ._serialization import convert_official, read_model_info, save_model
from .hub import create_model_from_folder, save_pretrained
from .timm_bridge import register_timm_models, to_timm_model

__all__ = [
    "FeatureInfo",
    "FeatureListNet",
    "InitReport",
    "adapt_input_conv",
    "convert_official",
    "create_model",
    "create_model_from_folder",
    "get_pretrained_cfg",
    "init_from_pretrained",
    "is_model",
    "list_models",
    "load_checkpoint",
    "model_entrypoint",
    "read_model_info",
    "read_state_dict",
    "register_model",
    "register_timm_models",
    "save_model",
    "save_pretrained",
    "to_timm_model",
]
