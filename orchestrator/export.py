"""`deps-orch export`: one evaluated subnet of a run as a file to deploy, with a JSON sidecar.

The subnet is named by its id or picked as the most accurate one under a
constraint (the run's own `evaluation.constraint`, tightened by `--max-macs` and
`--max-latency-ms`), among the rows evaluated on the run's final weights. The
sidecar says what the file is: the config, MACs and parameters counted on the
exported module, top-1 and latency from the evaluation, the input it expects,
the checkpoint epoch and the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.storage.discovery import find_run_dir
from workers.constraint import SubnetConstraint, best_subnet
from workers.rundir.layout import RunDir
from workers.rundir.plan_record import PlanRecord
from workers.rundir.stages import finished_stages
from workers.rundir.tables import RunStore

FORMATS = {"torchscript": ".pt", "onnx": ".onnx", "state_dict": ".pth"}  # format: the file's suffix


@dataclass(frozen=True)
class ExportRequest:
    run: str
    root: Path
    subnet_id: str | None = None
    best: bool = False
    max_macs: float | None = None
    max_latency_ms: float | None = None
    format: str = "torchscript"
    output: Path | None = None


@dataclass(frozen=True)
class Exported:
    path: Path
    sidecar: Path
    row: dict
    macs: int
    params: int


def _final_weights(files: RunDir) -> Path:
    stages = finished_stages(files)
    if not stages:
        raise UserError(f"run {files.name}: no finished training stage in {files.stages}: nothing to export yet")
    last = max(stages.values(), key=lambda s: s["first_epoch"] + s["epochs"])
    path = Path(last["checkpoint"])
    if not path.exists():
        raise UserError(f"run {files.name}: its final weights {path} are gone")
    return path


def _constraint(request: ExportRequest, spec: dict) -> SubnetConstraint:
    own = SubnetConstraint.model_validate(spec.get("evaluation", {}).get("constraint") or {})

    def tighter(flag: float | None, current: float | None) -> float | None:
        return current if flag is None else flag if current is None else min(flag, current)

    return SubnetConstraint(
        max_macs=tighter(request.max_macs, own.max_macs),
        max_latency_ms=tighter(request.max_latency_ms, own.max_latency_ms),
    )


def pick_row(request: ExportRequest, rows: list[dict], spec: dict, run: str) -> dict:
    """The row to export: the named subnet, or the best under the constraint."""
    if request.subnet_id is not None:
        matches = [r for r in rows if r["subnet_id"].startswith(request.subnet_id)]
        if len(matches) != 1:
            what = "no" if not matches else f"{len(matches)}"
            raise UserError(
                f"export {run} {request.subnet_id}: {what} evaluated subnets have that id "
                f"({len(rows)} evaluated; deps-orch compare {run} lists them, or use --best)"
            )
        return matches[0]
    constraint = _constraint(request, spec)
    best = best_subnet(rows, constraint)
    if best is None:
        smallest = min(rows, key=lambda r: r["macs"])
        timed = [r["latency_ms"] for r in rows if r["latency_ms"] is not None]
        fastest = f", the fastest {min(timed):.3g} ms" if timed else ", none timed"
        raise UserError(
            f"export {run} --best: no evaluated subnet meets {constraint.describe()} "
            f"(the smallest has {smallest['macs'] / 1e6:.3g} MMACs{fastest})"
        )
    return best


def export_subnet(request: ExportRequest) -> Exported:
    if request.format not in FORMATS:
        raise UserError(f"--format {request.format}: unknown; one of {', '.join(FORMATS)}")
    if (request.subnet_id is None) == (not request.best):
        raise UserError("export: name a SUBNET_ID or ask for --best, one of the two")
    if request.subnet_id is not None and (request.max_macs is not None or request.max_latency_ms is not None):
        raise UserError("export: --max-macs and --max-latency-ms go with --best, not with a SUBNET_ID")
    files = RunDir(find_run_dir(request.run, request.root))
    spec = files.read_json(files.worker_spec)
    plan = PlanRecord.read(files)
    if spec is None or plan is None or plan.num_classes is None:
        raise UserError(
            f"run {files.name}: no {files.worker_spec.name} or plan (submitted by an older deps-orch); "
            "submit it again, which keeps its training and evaluation, then export"
        )
    weights = _final_weights(files)
    rows = RunStore(files).subnets().to_pylist()
    last = max((r["checkpoint_epoch"] for r in rows), default=None)
    rows = [r for r in rows if r["checkpoint_epoch"] == last]
    if not rows:
        raise UserError(f"run {files.name}: no evaluated subnet (evaluation has not run); nothing to export")
    row = pick_row(request, rows, spec, files.name)

    import torch

    from workers.data.datasets import normalization
    from workers.job import WorkerSpec
    from workers.subnet_export import calibrated_subnet, count_macs, count_params, example_input, write_subnet
    from workers.supernet.space import SubnetConfig

    state = torch.load(weights, map_location="cpu", weights_only=True)
    if int(state["epoch"]) != row["checkpoint_epoch"]:
        raise UserError(
            f"run {files.name}: subnet {row['subnet_id']} was evaluated on epoch {row['checkpoint_epoch']}'s "
            f"weights, the run's final weights are epoch {state['epoch']}'s; submit the run again to evaluate them"
        )
    work = WorkerSpec.model_validate(spec)
    config = SubnetConfig.from_json(row["config"])
    module = calibrated_subnet(work, state["model"], config, plan.num_classes, work.evaluation.threads)
    path = request.output or files.path / "exports" / f"{row['subnet_id']}{FORMATS[request.format]}"
    write_subnet(module, config, request.format, path)
    macs, params = count_macs(module, example_input(config)), count_params(module)
    norm = normalization(work.dataset)
    sidecar = path.with_name(path.name + ".json")
    files.write_json(
        sidecar,
        {
            "run": files.name,
            "method": row["method"],
            "subnet_id": row["subnet_id"],
            "config": config.to_dict(),
            "format": request.format,
            "file": path.name,
            "input": {
                "shape": [1, 3, config.resolution, config.resolution],
                "dtype": "float32",
                "layout": "NCHW, RGB scaled to [0, 1], then (x - mean) / std",
                "mean": list(norm.mean),
                "std": list(norm.std),
            },
            "num_classes": plan.num_classes,
            "macs": macs,
            "params": params,
            "top1": row["top1"],
            "top5": row["top5"],
            "test_images": row["test_images"],
            "calibration_images": row["calibration_images"],
            "latency_ms": row["latency_ms"],
            "latency_batch_size": row["latency_batch_size"],
            "batch_latency_ms": row["batch_latency_ms"],
            "latency_device": row["latency_device"],
            "latency_threads": row["latency_threads"],
            "checkpoint_epoch": row["checkpoint_epoch"],
            "weights": str(weights),
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
    return Exported(path, sidecar, row, macs, params)
