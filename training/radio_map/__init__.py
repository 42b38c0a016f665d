"""The radio-map model family: a physics prior (censored log-distance channel, EIRP nuisance)
with learned residual maps and a fingerprint memory, as a grid posterior inside the ONNX graph."""
