"""The training loop's stop check at each epoch end: a cancel request, or a budget the next epoch would pass.

Rank 0 decides (it has just written the epoch's ledger row) and broadcasts the
decision, so every rank stops after the same epoch, with its checkpoint reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from orchestrator.state import RunState
from orchestrator.stopping import StopRecord, cancel_request, record_stop
from workers.budget import check_epoch

if TYPE_CHECKING:
    from orchestrator.spec import JobSpec
    from workers.methods import TrainingMethod


class EpochGuard:
    def __init__(self, spec: JobSpec, run_dir: Path, method: TrainingMethod, rank: int, device: torch.device) -> None:
        self.spec, self.run_dir, self.method, self.rank, self.device = spec, run_dir, method, rank, device

    def after_epoch(self, epoch: int, job_end: int) -> bool:
        """Whether to stop after `epoch` (the same answer on every rank). `job_end`: this training job's end epoch."""
        record = self._decide(epoch, job_end) if self.rank == 0 else None
        if record is not None:
            record_stop(self.run_dir, record)
            print(f"[{self.spec.run}] stopping after epoch {epoch + 1}: {record.reason}", flush=True)
        return self._broadcast(record is not None)

    def _decide(self, epoch: int, job_end: int) -> StopRecord | None:
        following = epoch + 1
        if following >= self.method.epochs:
            return None  # training is done; the controller checks before evaluating
        reason = cancel_request(self.run_dir)
        if reason is not None:
            return StopRecord(RunState.CANCELLED, reason, epoch)
        verdict = check_epoch(
            self.spec.budget, self.run_dir, following, self.method.phase(following), new_job=following >= job_end
        )
        return StopRecord(RunState.BUDGET_EXHAUSTED, verdict, epoch) if verdict is not None else None

    def _broadcast(self, stop: bool) -> bool:
        if not (dist.is_available() and dist.is_initialized()):
            return stop
        flag = torch.tensor([1 if stop else 0], dtype=torch.int64)
        if dist.get_backend() == "nccl":
            flag = flag.to(self.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())
