#!/usr/bin/env bash
# Makes sure the servers the tests talk to are running on this machine (Debian 12, no systemd):
#   RabbitMQ     127.0.0.1:5672, user guest/guest
#   PostgreSQL   15, on its Unix socket (/var/run/postgresql) and 127.0.0.1:5432
# and that `promtool` and `prometheus` (Debian's prometheus package, never started as a service) are
# there for the monitoring tests, with RabbitMQ's rabbitmq_prometheus plugin (metrics on :15692).
# When both already answer it only checks, in well under a second. A missing server is
# installed from Debian's packages; a stopped one is started with the commands that start it
# on the CI machines. Idempotent. Needs root, or sudo, only when it has to install or start.
# Messages go to stderr; exit 0 means both answer (and RabbitMQ's metrics endpoint).
set -euo pipefail

say() { echo "services: $*" >&2; }
die() { say "$*"; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

RABBITMQ_START_TIMEOUT_S=90
POSTGRES_START_TIMEOUT_S=30

rabbitmq_answers() { timeout 2 bash -c '</dev/tcp/127.0.0.1/5672' 2>/dev/null; }
postgres_answers() {
  command -v pg_isready >/dev/null \
    && pg_isready -q -t 2 -h 127.0.0.1 -p 5432 \
    && pg_isready -q -t 2 -p 5432   # the default socket directory
}
rabbitmq_installed() { [ -x /usr/sbin/rabbitmq-server ]; }
rabbitmq_metrics_answer() { timeout 2 bash -c '</dev/tcp/127.0.0.1/15692' 2>/dev/null; }
postgres_installed() { command -v pg_ctlcluster >/dev/null && [ -n "$(ls -A /etc/postgresql 2>/dev/null)" ]; }

# The packages' maintainer scripts would try to start the daemons (and fail without systemd):
# a policy-rc.d that answers 101 stops them; this script starts both itself, always the same way.
apt_install() {
  say "installing $* with apt (a minute or two)"
  local own_policy="" rc=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d'
    own_policy=1
  fi
  as_root apt-get update -q >&2 || rc=$?
  [ "$rc" -ne 0 ] || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2 || rc=$?
  [ -z "$own_policy" ] || as_root rm -f /usr/sbin/policy-rc.d
  [ "$rc" -eq 0 ] || die "apt-get failed (exit $rc) installing $*"
}

# A fresh RabbitMQ gets the CI machines' settings: node rabbit@localhost (so it does not depend
# on this host's name resolving) and listeners on loopback only (guest may log in only there).
configure_fresh_rabbitmq() {
  if ! grep -qs '^NODENAME=' /etc/rabbitmq/rabbitmq-env.conf; then
    as_root sh -c 'printf "NODENAME=rabbit@localhost\nERL_EPMD_ADDRESS=127.0.0.1\n" >> /etc/rabbitmq/rabbitmq-env.conf'
  fi
  if ! grep -qs '^listeners\.tcp\.' /etc/rabbitmq/rabbitmq.conf; then
    as_root sh -c 'echo "listeners.tcp.local = 127.0.0.1:5672" >> /etc/rabbitmq/rabbitmq.conf'
  fi
}

# A fresh PostgreSQL gets the CI machines' authentication: trust on the socket and on loopback,
# so the tests connect as `postgres` with no password. For a test machine only.
configure_fresh_postgres() {
  local version="$1" hba="/etc/postgresql/$1/main/pg_hba.conf"
  say "PostgreSQL $version is new: trust authentication on the socket and loopback (test machine)"
  as_root sh -c "cat > '$hba'" <<'EOF'
# Written by deploy/services.sh for a test machine: no passwords on the socket and loopback.
local   all   all                  trust
host    all   all   127.0.0.1/32   trust
host    all   all   ::1/128        trust
EOF
  as_root chown postgres:postgres "$hba"
}

start_rabbitmq() {
  if as_root rabbitmqctl -q -t 5 ping >/dev/null 2>&1; then
    say "RabbitMQ node is up but not yet listening on 5672: waiting for it"
  else
    say "starting RabbitMQ"
    as_root rabbitmq-server -detached >&2
  fi
  # await_startup gives up at once while the new node is not yet registered: ping first.
  local waited=0
  until as_root rabbitmqctl -q -t 5 ping >/dev/null 2>&1; do
    [ "$waited" -lt "$RABBITMQ_START_TIMEOUT_S" ] || die "RabbitMQ did not start; see /var/log/rabbitmq/"
    sleep 1; waited=$((waited + 1))
  done
  as_root rabbitmqctl -q -t "$RABBITMQ_START_TIMEOUT_S" await_startup >&2 \
    || die "RabbitMQ did not finish booting; see /var/log/rabbitmq/"
}

ensure_postgres_cluster() {
  if [ ! -d "/etc/postgresql/$1/main" ]; then
    say "creating PostgreSQL cluster $1/main"
    as_root pg_createcluster "$1" main >&2
  fi
}

start_postgres() {
  local version="$1"
  if as_root pg_ctlcluster "$version" main status >/dev/null 2>&1; then
    say "PostgreSQL $version is running but not answering yet: waiting for it"
  else
    say "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2
  fi
}

# The queue depths that the dashboard and the dead-letter alert read (tests/e2e/test_monitoring_live.py).
enable_rabbitmq_metrics() {
  rabbitmq_metrics_answer && return 0
  say "enabling RabbitMQ's rabbitmq_prometheus plugin"
  as_root rabbitmq-plugins enable rabbitmq_prometheus >&2
  wait_until 30 "RabbitMQ's metrics on 127.0.0.1:15692" rabbitmq_metrics_answer
}

wait_until() {  # seconds, what, check-function
  local waited=0
  until "$3"; do
    [ "$waited" -lt "$1" ] || die "$2 does not answer after ${1}s"
    sleep 1; waited=$((waited + 1))
  done
}

main() {
  local need_rabbitmq="" need_postgres="" missing=()
  # promtool for tests/deploy/test_monitoring.py; the server for tests/e2e/test_monitoring_live.py,
  # which starts its own on a free port (policy-rc.d keeps the package's service stopped).
  command -v promtool >/dev/null && command -v prometheus >/dev/null \
    || apt_install --no-install-recommends prometheus
  rabbitmq_answers || need_rabbitmq=1
  postgres_answers || need_postgres=1
  if [ -z "$need_rabbitmq$need_postgres" ]; then
    say "RabbitMQ (127.0.0.1:5672) and PostgreSQL (socket, 127.0.0.1:5432) are running"
    enable_rabbitmq_metrics
    return 0
  fi

  local fresh_rabbitmq="" fresh_postgres=""
  if [ -n "$need_rabbitmq" ] && ! rabbitmq_installed; then missing+=(rabbitmq-server); fresh_rabbitmq=1; fi
  if [ -n "$need_postgres" ] && ! postgres_installed; then missing+=(postgresql); fresh_postgres=1; fi
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

  if [ -n "$need_rabbitmq" ]; then
    [ -z "$fresh_rabbitmq" ] || configure_fresh_rabbitmq
    start_rabbitmq
    wait_until 10 "RabbitMQ on 127.0.0.1:5672" rabbitmq_answers
    say "RabbitMQ is running on 127.0.0.1:5672"
  fi
  if [ -n "$need_postgres" ]; then
    # The newest installed major version (Debian 12: 15).
    local version
    version="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf "%f\n" | sort -V | tail -n 1)"
    [ -n "$version" ] || die "no PostgreSQL version under /etc/postgresql"
    ensure_postgres_cluster "$version"
    [ -z "$fresh_postgres" ] || configure_fresh_postgres "$version"
    start_postgres "$version"
    wait_until "$POSTGRES_START_TIMEOUT_S" "PostgreSQL $version (socket and 127.0.0.1:5432)" postgres_answers
    say "PostgreSQL $version is running (socket and 127.0.0.1:5432)"
  fi
  enable_rabbitmq_metrics
}

main "$@"
