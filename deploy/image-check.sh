#!/usr/bin/env bash
# The image, built and run here: builds the Dockerfile, runs `serve` in a container on the host
# network against this machine's RabbitMQ and PostgreSQL and a SeaweedFS of its own, and checks
# it as its neighbours and Docker see it (tests/image_check.py prints one line per check).
#
#   bash deploy/image-check.sh          # exit 0 when every check passes
#
# On a fresh Debian machine it installs Docker (apt docker.io) and starts the daemon when they
# are missing. When python:3.11-slim-bookworm cannot be pulled it builds a stand-in from Debian's
# own packages (debootstrap); when the PyTorch CPU index cannot be reached it serves the CPU
# torch wheel and its dependencies from a local PEP 503 folder. Both are kept for the next run,
# as are Docker's layer cache and pip's cache mount: a rerun with unchanged dependencies
# rebuilds only the project layer. It leaves no containers, vhosts or databases behind; the
# image it built (heimdall-training:check) and the stand-in base stay. Needs root (or sudo)
# and a few GB. Not part of deploy/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=heimdall-training:check
UPSTREAM_BASE=python:3.11-slim-bookworm
STANDIN_BASE=heimdall-base:bookworm
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/heimdall-image-check
RUN_ID=$(date +%s)-$$
DOCKER=/usr/bin/docker   # docker.io's 20.10 client: another `docker` on PATH may ask for buildx

say() { echo "image-check: $*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
docker() { as_root "$DOCKER" "$@"; }

cleanup() {
  local ids
  ids=$(docker ps -aq --filter "label=heimdall-image-check=$RUN_ID" 2>/dev/null || true)
  [ -z "$ids" ] || docker rm -f $ids >/dev/null
  [ -z "${INDEX_PID:-}" ] || kill "$INDEX_PID" 2>/dev/null || true
}
trap cleanup EXIT

ensure_docker() {
  if [ ! -x "$DOCKER" ] || ! command -v debootstrap >/dev/null; then
    say "installing docker.io and debootstrap with apt"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io debootstrap >/dev/null
  fi
  docker info >/dev/null 2>&1 && return
  say "starting dockerd (log: $CACHE/dockerd.log)"
  as_root setsid dockerd >"$CACHE/dockerd.log" 2>&1 < /dev/null &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && return; sleep 0.5; done
  say "dockerd did not start:"; tail -20 "$CACHE/dockerd.log" >&2; exit 1
}

apt_mirror() {  # the Debian mirror apt's own sources name
  { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null || true; } \
    | awk '/^URIs:/ {print $2; exit} /^deb / {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}'
}

# Sets PYTHON_IMAGE: the upstream base when it can be pulled, else a stand-in built once.
ensure_base() {
  if docker image inspect "$UPSTREAM_BASE" >/dev/null 2>&1 \
     || timeout 60 "$DOCKER" pull -q "$UPSTREAM_BASE" >/dev/null 2>&1; then
    PYTHON_IMAGE=$UPSTREAM_BASE; return
  fi
  PYTHON_IMAGE=$STANDIN_BASE
  docker image inspect "$STANDIN_BASE" >/dev/null 2>&1 && return
  local mirror rootfs cert
  mirror=$(apt_mirror); mirror=${mirror:-http://deb.debian.org/debian}
  rootfs=$(mktemp -d)
  say "$UPSTREAM_BASE cannot be pulled: building $STANDIN_BASE from $mirror (about a minute)"
  as_root debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1
  # The CA bundle this machine's pip trusts (it may include a proxy's CA) replaces the image's.
  cert=$(.venv/bin/pip config get global.cert 2>/dev/null || echo /etc/ssl/certs/ca-certificates.crt)
  as_root install -D -m 0644 "$cert" "$rootfs$cert"
  as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  as_root tar -C "$rootfs" -c . | docker import -c "ENV PIP_CERT=$cert" -c 'ENV LANG=C.UTF-8' \
    -c 'CMD ["python3"]' - "$STANDIN_BASE" >/dev/null
  as_root rm -rf "$rootfs"
}

# Sets TORCH_INDEX_URL: PyTorch's CPU index when it answers, else a local PEP 503 folder.
ensure_torch_index() {
  if timeout 10 .venv/bin/python -c "import urllib.request; urllib.request.urlopen('$TORCH_CPU_INDEX/torch/')" \
       2>/dev/null; then
    TORCH_INDEX_URL=$TORCH_CPU_INDEX; return
  fi
  local pin folder port
  pin=$(grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')
  folder=$CACHE/torch-index/${pin#torch==}
  if [ ! -f "$folder/.complete" ]; then
    say "$TORCH_CPU_INDEX cannot be reached: a local index of $pin (CPU) and its dependencies"
    rm -rf "$folder"; mkdir -p "$folder/wheels"
    .venv/bin/pip download -q --only-binary=:all: "$pin" -d "$folder/wheels" >"$CACHE/pip-download.log" 2>&1 \
      || { tail -20 "$CACHE/pip-download.log" >&2; exit 1; }
    for wheel in "$folder"/wheels/*.whl; do  # PEP 503: one folder per normalised project name
      project=$(basename "$wheel" | cut -d- -f1 | tr 'A-Z_.' 'a-z--')
      mkdir -p "$folder/simple/$project" && mv "$wheel" "$folder/simple/$project/"
    done
    touch "$folder/.complete"
  fi
  # The same port on every run when it is free: the URL is a build argument, part of the layer cache key.
  port=$(.venv/bin/python -c "
import socket
for port in range(38700, 38800):
    with socket.socket() as s:
        try: s.bind(('127.0.0.1', port)); print(port); break
        except OSError: pass")
  .venv/bin/python -m http.server --bind 127.0.0.1 --directory "$folder" "$port" >/dev/null 2>&1 &
  INDEX_PID=$!
  TORCH_INDEX_URL=http://127.0.0.1:$port/simple
  for _ in $(seq 40); do curl -fs "$TORCH_INDEX_URL/torch/" >/dev/null && return; sleep 0.25; done
  say "the local torch index did not answer on $TORCH_INDEX_URL"; exit 1
}

main() {
  local started build_started built previous
  started=$(date +%s)
  mkdir -p "$CACHE"
  bash deploy/setup.sh      # .venv: SeaweedFS (weed) and the client side of the checks
  bash deploy/services.sh   # RabbitMQ and PostgreSQL on this machine
  ensure_docker
  ensure_base
  ensure_torch_index
  say "building $IMAGE (base $PYTHON_IMAGE, torch from $TORCH_INDEX_URL)"
  build_started=$(date +%s)
  previous=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
  DOCKER_BUILDKIT=1 docker build --progress=plain --network host --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" \
    --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL" -t "$IMAGE" . >"$CACHE/build.log" 2>&1 \
    || { tail -40 "$CACHE/build.log" >&2; echo "FAIL build: see $CACHE/build.log"; exit 1; }
  built=$(date +%s)
  # The image this one replaces, untagged now: removed (BuildKit's layer cache is kept apart).
  if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ]; then
    docker rmi "$previous" >/dev/null 2>&1 || true
  fi
  echo "ok   build: $IMAGE in $((built - build_started)) s, set-up before it $((build_started - started)) s" \
    "($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.1f GB", $1 / 1e9}'))"
  as_root .venv/bin/python -m tests.deploy.image_check --image "$IMAGE" --run-id "$RUN_ID"
  echo "image-check: all checks passed in $(($(date +%s) - started)) s"
}

main "$@"
