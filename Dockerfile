# Heimdall training service: the RabbitMQ consumer and job runner (`heimdall-training serve`),
# HTTP /healthz, /readyz and /metrics on 8080. The other subcommands (train, synth, ops, jobs)
# run from the same image: `docker run --rm IMAGE train --data_dir s3://...`.
#
# Why python:3.11-slim and not nvidia/cuda: the CUDA build of torch from PyTorch's wheel index
# brings its own CUDA runtime, cuBLAS, cuDNN and NCCL (as nvidia-* wheels next to torch). A
# container needs only the host's driver, which the NVIDIA Container Toolkit mounts when the
# container asks for a GPU (`docker run --gpus 1`, or the device reservation in
# deploy/docker-compose.yml). An nvidia/cuda:*-cudnn-runtime base would add a second copy of
# the same libraries (several GB) and an Ubuntu Python that is not the 3.11 pyproject requires.
#
# Build from the repository root (BuildKit, for the pip cache mounts):
#   DOCKER_BUILDKIT=1 docker build -t heimdall-training .
# CPU-only image (no CUDA libraries, a few GB smaller):
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t heimdall-training:cpu .
# Where Docker Hub or PyTorch's index cannot be reached, two build arguments replace them:
# PYTHON_IMAGE (any Debian bookworm image with Python 3.11 and venv) and TORCH_INDEX_URL (any
# PEP 503 index holding torch and its dependencies, e.g. a local folder served over HTTP).
# deploy/image-check.sh does both on this kind of machine.
#
# No `# syntax=` line on purpose: it makes BuildKit pull its frontend image first, which fails
# offline, and the built-in frontend already supports `RUN --mount=type=cache`.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- requirements: the pinned dependencies of pyproject.toml, the one place they are written ----
# A stage of its own so that the dependency layers below are rebuilt only when this list
# changes, not when any other line of pyproject.toml does.
FROM ${PYTHON_IMAGE} AS requirements
COPY pyproject.toml /src/
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /requirements.txt

# ---- deps: a virtual environment in /opt/venv, copied whole into the runtime stage ----
FROM ${PYTHON_IMAGE} AS deps
# cu128 (CUDA 12.8) runs on drivers >= 570 and supports every GPU from Volta to Blackwell.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY --from=requirements /requirements.txt /tmp/requirements.txt
# 1. torch from the CUDA wheel index. `pip install` of the rest afterwards keeps it: the
#    pin torch==2.13.0 matches 2.13.0+cu128, since PEP 440 ignores a local label (+cu128) when
#    the pin has none. Left to PyPI, pip would choose torch's build and its CUDA version itself.
# 2. Every other dependency from PyPI, exactly as pinned.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --index-url "$TORCH_INDEX_URL" "$(grep '^torch==' /tmp/requirements.txt)" \
 && pip install -r /tmp/requirements.txt

# ---- wheel: the project itself, built once into a wheel ----
FROM deps AS wheel
WORKDIR /src
COPY pyproject.toml ./
COPY service ./service
COPY training ./training
COPY foundation ./foundation
COPY cli ./cli
COPY messages ./messages
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps --wheel-dir /wheels .

# ---- runtime ----
FROM ${PYTHON_IMAGE} AS runtime
# tini as PID 1: forwards SIGTERM to the service (which then gives the running job its
# shutdown grace to checkpoint) and reaps the job subprocesses the service starts.
# Not version-pinned: Debian stable only ever replaces it with security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 heimdall \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/heimdall \
        --shell /usr/sbin/nologin heimdall \
 && install -d -o heimdall -g heimdall -m 0750 /var/lib/heimdall

# HEIMDALL_STATE_DIR holds checkpoints (resumable after a restart) and the verified shard
# cache: mount a volume there. The other HEIMDALL_* settings are given at run time.
# NVIDIA_DRIVER_CAPABILITIES: the driver parts the toolkit mounts (compute = libcuda, utility =
# nvidia-smi); it does not by itself give the container a GPU.
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HEIMDALL_STATE_DIR=/var/lib/heimdall \
    HEIMDALL_HTTP_PORT=8080 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# The dependencies (GB, rebuilt only when the pins change) and the project (a small layer of its
# own: editing the code rebuilds only this) go in separately. A regular install, not editable,
# from the wheel stage's wheel: no source tree in the image.
COPY --from=deps /opt/venv /opt/venv
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-deps /wheels/*.whl \
 && heimdall-training --help > /dev/null

# Numeric, so that Kubernetes runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /home/heimdall
VOLUME ["/var/lib/heimdall"]
EXPOSE 8080

# Exit code of the service's own probe (see `heimdall-training serve --check`). Only meaningful
# for `serve`: run other subcommands with `docker run --no-healthcheck`.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["heimdall-training", "serve", "--check"]

ENTRYPOINT ["/usr/bin/tini", "--", "heimdall-training"]
CMD ["serve"]
