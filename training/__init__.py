"""The training child: runs only inside the job's subprocess (`python -m training`, or
`heimdall-training train` by hand).

data → model → fit → evaluate → export → register, read top to bottom in `pipeline.py`; each model
family in its own package (`radio_map/`, `neural/`, `baselines/`). Imports torch, Lightning,
MLflow and ONNX; never imports the async service.
"""
