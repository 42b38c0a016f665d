"""The async service (`heimdall-training serve`): one event loop that consumes triggers, keeps the
job store, runs each job in a training child (`runner/`) and relays the outbox to RabbitMQ.

It never imports torch, Lightning, MLflow, ONNX or numpy, nor anything in `training/`; it talks to
the child only through `foundation.child_protocol`.
"""
