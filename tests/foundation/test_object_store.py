"""File modes of the local object store: what it publishes is readable by other users (an
inference service on a shared volume), and writing it leaves the state directory's own files private.
Runs under a strict umask (077), as a hardened service would, so that 0644 cannot come from the umask.
"""

from __future__ import annotations

import os
import stat

import pytest

from foundation.object_store import LocalStore


@pytest.fixture
def strict_umask():
    previous = os.umask(0o077)
    yield
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_published_model_files_and_their_folders_are_readable_by_others(tmp_path, strict_umask):
    state = tmp_path / "state"
    store = LocalStore(str(state / "store" / "models"))
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx bytes")

    store.upload("heimdall-localization/1/model.onnx", onnx)
    store.write_bytes("heimdall-localization/1/model.json", b"{}")

    published = state / "store" / "models" / "heimdall-localization" / "1"
    assert mode(published / "model.onnx") == 0o644
    assert mode(published / "model.json") == 0o644
    for folder in (published, published.parent, state / "store" / "models"):
        assert mode(folder) == 0o755, folder
    assert mode(state) == mode(state / "store") == 0o700  # above the store's root: the umask decides
    assert (published / "model.onnx").read_bytes() == b"onnx bytes"
    assert not [p.name for p in published.iterdir() if p.name.endswith(".part")]


def test_a_rewrite_is_published_too_and_the_process_umask_is_left_private(tmp_path, strict_umask):
    state = tmp_path / "state"
    state.mkdir()
    store = LocalStore(str(state / "store"))
    store.write_bytes("m/1/model.json", b"old")
    (state / "store" / "m" / "1" / "model.json").chmod(0o600)  # as written before the fix

    store.write_bytes("m/1/model.json", b"new")
    private = state / "jobs.db"
    private.write_bytes(b"the job store")  # created by the service itself, after the store wrote

    assert mode(state / "store" / "m" / "1" / "model.json") == 0o644
    assert mode(private) == 0o600
    assert mode(state) == 0o700  # the state directory itself was not made public
