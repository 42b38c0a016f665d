"""Object storage behind one small interface: a local folder, or S3/MinIO through boto3.

A store is rooted at a URI (`s3://bucket/prefix`, `file:///path` or a plain path); keys are
'/'-separated paths below that root. Writes are all-or-nothing per object: local writes go
to a temporary file that is renamed into place, S3 puts are atomic by nature.
botocore's exceptions are translated here and nowhere else.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from foundation.errors import StorageUnavailable

# What a local store holds is published: an inference service running as another user reads
# it from a shared volume. mkstemp's 0600 would hide it, and the process umask is left alone so
# that the state directory's own files (job store, checkpoints) keep their private modes.
PUBLISHED_MODE = 0o644
PUBLISHED_DIR_MODE = 0o755


class ObjectTooLarge(ValueError):
    """An object larger than its reader allows, found so before it is read whole."""

    def __init__(self, uri: str, max_bytes: int):
        super().__init__(f"{uri} is larger than {max_bytes} bytes")
        self.uri, self.max_bytes = uri, max_bytes


@dataclass(frozen=True)
class S3Credentials:
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    region: str = "us-east-1"


def normalise_uri(uri: str) -> str:
    """`file:///x`, `/x` and `x` all become an absolute `file://` URI; `s3://` stays."""
    if uri.startswith("s3://"):
        return uri.rstrip("/")
    path = urlparse(uri).path if uri.startswith("file://") else uri
    return "file://" + str(Path(path).expanduser().resolve())


def join_uri(root: str, key: str) -> str:
    return f"{root.rstrip('/')}/{key.lstrip('/')}" if key else root.rstrip("/")


def is_within(uri: str, root: str) -> bool:
    """True when `uri` names `root` itself or something below it."""
    uri, root = normalise_uri(uri), normalise_uri(root)
    return uri == root or uri.startswith(root + "/")


class LocalStore:
    def __init__(self, root_uri: str):
        self.uri = normalise_uri(root_uri)
        self.root = Path(urlparse(self.uri).path)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise ValueError(f"key {key!r} escapes the store root {self.root}")
        return path

    def uri_of(self, key: str) -> str:
        return join_uri(self.uri, key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """Raises FileNotFoundError, ObjectTooLarge (over max_bytes: at most max_bytes + 1 are read)."""
        with open(self._path(key), "rb") as handle:
            return _within(self.uri_of(key), handle.read(-1 if max_bytes is None else max_bytes + 1), max_bytes)

    def download(self, key: str, dest: Path) -> None:
        shutil.copyfile(self._path(key), dest)

    def _make_published_dirs(self, directory: Path) -> None:
        """The missing folders from the root down to `directory`, searchable by others whatever
        the umask; folders above the root (the state directory) keep the umask's modes."""
        self.root.parent.mkdir(parents=True, exist_ok=True)
        missing = [d for d in (directory, *directory.parents) if d == self.root or self.root in d.parents]
        for folder in reversed(missing):
            if not folder.is_dir():
                folder.mkdir(exist_ok=True)  # another writer may create it first
                folder.chmod(PUBLISHED_DIR_MODE)

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self._make_published_dirs(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                os.fchmod(out.fileno(), PUBLISHED_MODE)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def upload(self, key: str, src: Path) -> None:
        self.write_bytes(key, Path(src).read_bytes())

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())


class S3Store:
    def __init__(self, root_uri: str, credentials: S3Credentials):
        import boto3
        from botocore.config import Config

        self.uri = normalise_uri(root_uri)
        parsed = urlparse(self.uri)
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        self._client = boto3.client(
            "s3",
            endpoint_url=credentials.endpoint_url,
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            region_name=credentials.region,
            config=Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
            ),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri_of(self, key: str) -> str:
        return join_uri(self.uri, key)

    def _call(self, what: str, fn, *args, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(f"{self.uri}: {what}: not found") from exc
            if code in ("NoSuchBucket",):
                raise StorageUnavailable(f"{self.uri}: {what}: bucket {self.bucket} does not exist") from exc
            raise StorageUnavailable(f"{self.uri}: {what}: {code or exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"{self.uri}: {what}: {exc}") from exc

    def exists(self, key: str) -> bool:
        try:
            self._call(f"head {key}", self._client.head_object, Bucket=self.bucket, Key=self._key(key))
            return True
        except FileNotFoundError:
            return False

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """Raises FileNotFoundError, StorageUnavailable, ObjectTooLarge (over max_bytes: at most
        max_bytes + 1 are read, and the rest of the stream is dropped with its connection)."""
        body = self._call(f"get {key}", self._client.get_object, Bucket=self.bucket, Key=self._key(key))["Body"]
        try:
            data = self._call(f"read {key}", body.read, None if max_bytes is None else max_bytes + 1)
            return _within(self.uri_of(key), data, max_bytes)
        finally:
            body.close()

    def download(self, key: str, dest: Path) -> None:
        self._call(f"download {key}", self._client.download_file, self.bucket, self._key(key), str(dest))

    def write_bytes(self, key: str, data: bytes) -> None:
        self._call(f"put {key}", self._client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def upload(self, key: str, src: Path) -> None:
        self._call(f"upload {key}", self._client.upload_file, str(src), self.bucket, self._key(key))

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", self._client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str = "") -> list[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        full = self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        keys: list[str] = []
        pages = self._call(f"list {prefix}", lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=full)))
        for page in pages:
            for item in page.get("Contents", []):
                keys.append(item["Key"][len(self.prefix) + 1 :] if self.prefix else item["Key"])
        return sorted(keys)

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self._call(f"create bucket {self.bucket}", self._client.create_bucket, Bucket=self.bucket)


ObjectStore = LocalStore | S3Store


def _within(uri: str, data: bytes, max_bytes: int | None) -> bytes:
    if max_bytes is not None and len(data) > max_bytes:
        raise ObjectTooLarge(uri, max_bytes)
    return data


def open_store(uri: str, credentials: S3Credentials | None = None) -> ObjectStore:
    """The store for a root URI. `s3://` needs credentials (or boto3's own environment chain)."""
    if uri.startswith("s3://"):
        return S3Store(uri, credentials or S3Credentials())
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported object-store URI {uri!r}: use s3://, file:// or a path")
    return LocalStore(uri)
