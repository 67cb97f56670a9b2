"""The `tracking` section of a job spec: where the run's MLflow records go."""

from __future__ import annotations

from pydantic import Field

from workers.sections import Section


class TrackingSpec(Section):
    enabled: bool = True
    uri: str | None = Field(
        None, description="an MLflow tracking server (http://host:port) or store; default: <storage root>/_mlflow"
    )
    experiment: str | None = Field(None, description="default: the run's group, else its name")
