"""The child protocol's own rules: a closed set of messages, permits matched by id, settings whole."""

from __future__ import annotations

import io
import os
import signal
import threading

import pytest
from pydantic import SecretStr

from foundation.child_protocol import (ChildChannel, Failure, JobSpec, PermitAnswer, Progress, ProtocolError, Result,
                                       encode, parse_child_message)
from foundation.errors import DatasetError
from foundation.settings import SETTINGS_ENV, S3Settings, Settings, load_settings


@pytest.mark.parametrize("line", [
    b"not json", b"{}", b'{"event": "started"}', b'{"kind": "started", "extra": 1}', b'{"kind": "shutdown"}',
    b'{"kind": "failed", "failure": {"stage": "anywhere", "error_type": "x", "message": "m", "retryable": true}}',
])
def test_anything_but_a_valid_message_is_refused(line):
    with pytest.raises(ProtocolError):
        parse_child_message(line)


def test_a_message_survives_its_own_encoding():
    for message in (Progress(epoch=2, max_epochs=5, metrics={"val_loss": 0.5}), Result(result={"a": [1]})):
        assert parse_child_message(encode(message)) == message


def test_a_permit_answer_for_an_older_request_is_skipped():
    requests_r, requests_w = os.pipe()
    answers_r, answers_w = os.pipe()

    def service():  # reads the request, answers an older one "granted" first, then this one "denied"
        request = parse_child_message(os.fdopen(requests_r, "rb").readline())
        with os.fdopen(answers_w, "wb") as out:
            out.write(encode(PermitAnswer(request_id="an-earlier-request", granted=True)) + b"not an answer\n"
                      + encode(PermitAnswer(request_id=request.request_id, granted=False)))

    answering = threading.Thread(target=service)
    answering.start()
    disposition = signal.getsignal(signal.SIGTERM)
    try:
        assert ChildChannel(requests_w, os.fdopen(answers_r)).ask_permit() is False
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # asking commits the child to its answer
    finally:
        signal.signal(signal.SIGTERM, disposition)  # this is pytest's process, not a child's
    answering.join()


def test_with_no_service_to_ask_the_permit_is_denied():
    assert ChildChannel(None, io.StringIO("")).ask_permit() is False


def test_a_failure_from_an_error_keeps_its_stage_and_retryable_and_names_bugs_train():
    refused = Failure.of(DatasetError("d", "shards/0\n{}", "missing"))
    assert (refused.stage, refused.error_type, refused.retryable) == ("data", "DatasetError", False)
    assert Failure.of(KeyError("x")).stage == "train"


def test_a_full_disk_is_a_retryable_storage_failure_not_a_training_bug():
    with pytest.raises(OSError) as full:
        with open("/dev/full", "w") as disk:  # the kernel's always-full device: a real ENOSPC
            disk.write("checkpoint")
    failure = Failure.of(full.value)
    assert (failure.stage, failure.error_type, failure.retryable) == ("data", "StorageFull", True)


def test_the_settings_reach_the_child_whole_secrets_included(monkeypatch, tmp_path):
    settings = Settings(state_dir=tmp_path, amqp_url=SecretStr("amqp://u:p4ss@h/"),
                        s3=S3Settings(access_key_id=SecretStr("AKID"), secret_access_key=SecretStr("s3cr3t")))
    assert "p4ss" not in settings.model_dump_json() and "s3cr3t" not in repr(settings)  # masked everywhere else
    for key in [k for k in os.environ if k.startswith("HEIMDALL_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv(SETTINGS_ENV, settings.serialised())
    assert load_settings() == settings


def test_a_job_spec_refuses_an_unknown_field():
    with pytest.raises(ValueError, match="checkpoint_dirr"):
        JobSpec.model_validate({"data_uri": "d", "checkpoint_dirr": "/x"})
