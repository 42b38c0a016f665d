"""Heimdall training service.

Importing this package is cheap: torch, Lightning, MLflow and ONNX are imported only by the
modules of the training job (`service.training.pipeline` and what it calls), never by the package itself.
"""
