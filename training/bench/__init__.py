"""The science bench: how close the model comes to physics (oracle, Cramér-Rao bound,
baselines) across scenarios, and the report. Runs in `heimdall-training bench`, never in the service.
"""
