"""A method's finished stages: their final weights, kept in the run directory, and the record of them.

Rank 0 of the training job writes a stage's final weights (the largest network's
teacher of later stages, the start of the next stage, and for the last stage what
evaluation reads) to `<run_dir>/stages/<stage>.pt` once its last epoch is
checkpointed, then records it in `stages.json`. A resubmitted run starts at its
first stage without a record that still fits (same first epoch and epochs).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from workers.rundir.layout import RunDir, as_run_dir, shareable


def stage_weights(run_dir: Path | RunDir, stage: str) -> Path:
    return as_run_dir(run_dir).path / "stages" / f"{stage}.pt"


def finished_stages(run_dir: Path | RunDir) -> dict[str, dict]:
    files = as_run_dir(run_dir)
    data = files.read_json(files.stages)
    return data if isinstance(data, dict) else {}


def record_finished_stage(
    run_dir: Path | RunDir, stage: str, first_epoch: int, epochs: int, state_dict: dict, epoch: int
) -> Path:
    """Save the stage's final weights (atomically) and record the stage as finished; returns the weights' path."""
    files = as_run_dir(run_dir)
    path = stage_weights(files, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"model": state_dict, "epoch": epoch}, tmp)
        shareable(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    done = finished_stages(files)
    done[stage] = {"first_epoch": first_epoch, "epochs": epochs, "checkpoint": str(path)}
    files.write_json(files.stages, done)
    return path


def finished_weights(run_dir: Path | RunDir, stage: str, first_epoch: int, epochs: int) -> Path | None:
    """The final weights of a stage finished earlier with the same epochs, if they are still there."""
    record = finished_stages(run_dir).get(stage)
    if record is None or (record["first_epoch"], record["epochs"]) != (first_epoch, epochs):
        return None
    path = Path(record["checkpoint"])
    return path if path.exists() else None
