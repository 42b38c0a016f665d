"""Every error the service raises on purpose, arranged by what the caller must do.

HeimdallError                  stage, retryable
 ├── ConfigError               fix the settings or the flags          (retryable=False)
 ├── DatasetError              fix the dataset: names dataset, file, rule (retryable=False)
 ├── StorageUnavailable        object store unreachable: try again    (retryable=True)
 ├── TrainingError             the fit itself failed                   (retryable=False)
 ├── JobInterrupted            SIGTERM: checkpointed, resume later     (retryable=True)
 ├── ExportError               ONNX export or parity check failed      (retryable=False)
 └── RegistryError             MLflow refused or was unreachable       (retryable as given)

`stage` is one of the contract's stages: data, train, export, register.
Third-party exceptions are translated where each dependency is called (`raise ... from exc`).
"""

from __future__ import annotations


class HeimdallError(Exception):
    stage: str = "train"
    retryable: bool = False

    def __init__(self, message: str, *, stage: str | None = None, retryable: bool | None = None):
        super().__init__(message)
        self.message = message
        if stage is not None:
            self.stage = stage
        if retryable is not None:
            self.retryable = retryable


class ConfigError(HeimdallError):
    stage = "data"


class DatasetError(HeimdallError):
    """A dataset version breaks `heimdall.dataset/1`. Names the dataset, the file and the rule."""

    stage = "data"

    def __init__(self, dataset: str, file: str, rule: str, detail: str = ""):
        self.dataset, self.file, self.rule, self.detail = dataset, file, rule, detail
        text = f"dataset {dataset}: {file}: {rule}"
        super().__init__(f"{text}: {detail}" if detail else text)


class StorageUnavailable(HeimdallError):
    stage = "data"
    retryable = True


class TrainingError(HeimdallError):
    stage = "train"


class JobInterrupted(HeimdallError):
    """The job was asked to stop (SIGTERM) and saved a checkpoint to resume from."""

    stage = "train"
    retryable = True


class ExportError(HeimdallError):
    stage = "export"


class RegistryError(HeimdallError):
    stage = "register"
