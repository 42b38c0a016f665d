"""MLflow's failures as the project's: `mlflow_errors` translates them into RegistryError, the one
place that does (the registry, the job's run and the promote child all call MLflow through it)."""

from __future__ import annotations

from contextlib import contextmanager

from foundation.errors import RegistryError


@contextmanager
def mlflow_errors(what: str):
    """Translate MLflow's failures into RegistryError; unreachable or 5xx is retryable."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    try:
        yield
    except MlflowException as exc:
        raise RegistryError(f"MLflow {what}: {exc.message}", retryable=exc.get_http_status_code() >= 500) from exc
    except (RequestException, ConnectionError) as exc:
        raise RegistryError(f"MLflow {what}: {exc}", retryable=True) from exc


def create_unless_exists(what: str, create, *args, **kwargs) -> None:
    """`create(*args, **kwargs)`, where another replica creating the same thing at the same moment is no error."""
    from mlflow.exceptions import MlflowException

    with mlflow_errors(what):
        try:
            create(*args, **kwargs)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise


def ensure_experiment(tracking_uri: str, name: str, artifact_location: str | None) -> None:
    """Create the MLflow experiment unless it exists. Two replicas starting jobs at the same moment
    would otherwise race inside Lightning's logger, and the loser would fail its job."""
    from mlflow import MlflowClient

    create_unless_exists("create experiment", MlflowClient(tracking_uri=tracking_uri).create_experiment, name,
                         artifact_location=artifact_location)
