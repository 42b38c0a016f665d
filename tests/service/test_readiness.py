"""`serve` while its PostgreSQL accepts connections and never answers: /readyz says not ready (job
store) while /healthz stays up, the probes themselves never pile up behind the stalled database,
and the service is ready again, by itself, soon after the database answers.

A real `serve` process against the real RabbitMQ and PostgreSQL, the latter reached through a TCP
front that stalls on demand (`StallingProxy`). The readiness prober behaves like a kubelet: one
probe every half second, each given up after a second."""

from __future__ import annotations

import time
import urllib.request

import sqlalchemy as sa

from tests.support.servers import free_port
from tests.support.service_stack import ServiceProcess

PROBE_EVERY_S, PROBE_TIMEOUT_S = 0.5, 1.0
STALL_S = 12.0
RECOVERY_S = 45.0  # a stalled call ends at the store's deadline (10 s by default), then it reconnects


def probe(port: int, path: str) -> str:
    """What a kubelet would see: the body, or 'timeout' when it gave up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=PROBE_TIMEOUT_S) as response:
            return response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.read().decode()
    except OSError:
        return "timeout"


def test_a_stalled_job_store_makes_serve_unready_without_piling_up_probes_and_it_recovers(
        proxy, vhost, postgres, tmp_path):
    database = sa.make_url(postgres.create_database()).database
    env = {"HEIMDALL_AMQP_URL": vhost.url(), "HEIMDALL_HTTP_PORT": str(free_port()),
           "HEIMDALL_JOB_STORE_URL": proxy.url(database), "HEIMDALL_STATE_DIR": str(tmp_path / "state"),
           "HEIMDALL_WARM_SPARE": "false"}
    service = ServiceProcess(env, tmp_path / "serve.log")  # ready: the store answers through the proxy
    try:
        proxy.stall()
        answers, health = [], []
        stall_ends = time.monotonic() + STALL_S
        while time.monotonic() < stall_ends:
            answers.append(probe(service.port, "/readyz"))
            health.append(probe(service.port, "/healthz"))
            time.sleep(PROBE_EVERY_S)
        assert [a for a in answers if a.startswith("not ready") and "job-store" in a], answers
        assert health[-3:] == ["ok\n"] * 3  # alive: the event loop answers

        proxy.resume()
        deadline = time.monotonic() + RECOVERY_S
        while not probe(service.port, "/readyz").startswith("ready"):
            assert time.monotonic() < deadline, f"still not ready {RECOVERY_S:.0f} s after the database " \
                                                f"answered again: {probe(service.port, '/readyz')!r}"
            time.sleep(PROBE_EVERY_S)
    finally:
        code = service.stop()
    assert code == 0
