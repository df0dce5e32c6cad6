"""Deployment: re-parameterise any model (:func:`reparameterize_model`) and export it to ONNX or a
``torch.export`` program, verified in the target runtime (:func:`export_model`)."""

from .export import ExportResult, add_export_arguments, export_command, export_model
from .reparam import ConvNormSequential, fuse_bn_conv, reparameterize_model

__all__ = [
    "ConvNormSequential",
    "ExportResult",
    "add_export_arguments",
    "export_command",
    "export_model",
    "fuse_bn_conv",
    "reparameterize_model",
]
