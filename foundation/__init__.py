"""The foundation both processes import: settings, the training configuration, errors, logs,
object storage, checkpoints' storage layout, exit codes and the child protocol.

Runs in the async service and in the training child alike, so it imports neither: pydantic,
boto3 and the standard library only (no torch, numpy, MLflow or ONNX).
"""
