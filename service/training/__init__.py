"""The training job: runs only inside the child process (`heimdall-training train`).

data → model → fit → evaluate → export → register, read top to bottom in `pipeline.py`.
Imports torch, Lightning, MLflow and ONNX; never imports the async service.
"""
