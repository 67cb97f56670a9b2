"""The forecast without Ray: timing real steps in-process, and the arithmetic from timings to dollars."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import pytest
import torch
from torch.nn.modules.module import register_module_forward_hook

from orchestrator.plan import make_plan
from orchestrator.profile_job import measured_phases, profile_request
from orchestrator.spec_file import load_spec
from workers.diagnostics import diagnostics_seconds
from workers.forecast_model import forecast_from_profile
from workers.profiling import (
    EvalTiming,
    PhaseTiming,
    Profile,
    measure_profile,
    median_settled,
    profile_worker,
    untouched,
)
from workers.rundir.estimator import EpochCostEstimator, outlook
from workers.rundir.forecast import load_forecast, save_forecast
from workers.supernet.supernet import ElasticSupernet
from workers.worker_setup import set_up_worker


def _plan(tiny_spec, **sections):
    return make_plan(load_spec(tiny_spec("fc", **sections)))


def _profile(warmup: float = 0.1, shrinking: float = 0.3, setup: float = 2.0, fixed: float = 0.05) -> Profile:
    return Profile(
        world=2,
        setup_seconds=setup,
        epoch_fixed_seconds=fixed,
        steps_per_epoch=8,
        phases=[
            PhaseTiming("warmup", 0, [warmup, warmup * 1.1, warmup * 0.9], warmup * 3, 1.0),
            PhaseTiming("shrinking", 2, [shrinking, shrinking, shrinking * 2], shrinking, 3.0),
        ],
        evaluations=[
            EvalTiming("small", 1_000_000, 0.5, 128, 360, 360),
            EvalTiming("large", 9_000_000, 1.3, 128, 360, 360),
        ],
    )


def _row(epoch: int, phase: str, wall: float, overhead: float = 0.0, devices: int = 2, price: float = 0.05) -> dict:
    hours = (wall + overhead) * devices / 3600
    return {
        "epoch": epoch,
        "phase": phase,
        "wall_seconds": wall,
        "overhead_seconds": overhead,
        "devices": devices,
        "price_per_device_hour": price,
        "device_hours": hours,
        "dollars": hours * price,
        "finished_at": datetime.now(timezone.utc),
    }


@pytest.fixture
def torch_defaults():
    """The process defaults a training worker starts with (other test modules may change them)."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


class ForwardClock:
    """A clock that reads the supernet forward passes run so far: what a profile times is then exact."""

    def __init__(self) -> None:
        self.forwards = 0

    def __call__(self) -> float:
        return float(self.forwards)

    def count(self, module, inputs, output) -> None:
        if isinstance(module, ElasticSupernet):
            self.forwards += 1


def test_the_profile_times_every_phase_its_fixed_work_and_evaluations(tiny_spec, torch_defaults):
    plan = _plan(tiny_spec)
    request = profile_request(plan)
    assert [p for p, _ in request.phases] == ["warmup", "shrinking"]
    assert len(request.eval_subnets) == 2  # the smallest and the largest planned subnet
    setup = set_up_worker(plan.work, rank=0, world=1, device=torch.device("cpu"))
    clock = ForwardClock()
    hook = register_module_forward_hook(clock.count)
    try:
        with untouched(setup):
            profile = measure_profile(setup, request, 1.5, clock)
    finally:
        hook.remove()

    warmup, shrinking = profile.phases
    assert (warmup.phase, warmup.epoch, shrinking.phase, shrinking.epoch) == ("warmup", 0, "shrinking", 2)
    assert len(warmup.step_seconds) == len(shrinking.step_seconds) == 2
    assert warmup.subnets_per_step == 1.0 and shrinking.subnets_per_step == 3.0  # full model; sandwich of 3
    # A warmup step runs the full model once, a shrinking step three subnets: their times say so exactly.
    assert warmup.step_seconds == [1.0, 1.0] and warmup.first_step_seconds == 1.0
    assert shrinking.step_seconds == [3.0, 3.0]
    assert profile.setup_seconds == 1.5 and profile.epoch_fixed_seconds == 0.0  # no forward in the fixed work
    assert profile.steps_per_epoch == 512 // 32  # one worker here
    small, large = sorted(profile.evaluations, key=lambda e: e.macs)
    # Calibration (128 images in batches of 64) and the test split (360 in batches of 256): 2 + 2 forwards.
    assert small.macs < large.macs and small.seconds == large.seconds == 4.0
    assert small.calibration_images == 128 and small.test_images_used == small.test_images == 360
    assert Profile.from_dict(profile.to_dict()) == profile


def test_a_dry_runs_profile_has_a_set_up_of_its_own(tiny_spec, torch_defaults):
    plan = _plan(tiny_spec)
    profile = profile_worker(profile_request(plan), rank=0, world=1, device=torch.device("cpu"))
    assert [p.phase for p in profile.phases] == ["warmup", "shrinking"] and profile.setup_seconds > 0


def test_measuring_leaves_the_weights_and_the_optimiser_as_they_were(tiny_spec, torch_defaults):
    plan = _plan(tiny_spec)
    setup = set_up_worker(plan.work, rank=0, world=1, device=torch.device("cpu"))
    before = {k: v.clone() for k, v in setup.net.state_dict().items()}
    with untouched(setup):
        measure_profile(setup, profile_request(plan), 0.0)
    after = setup.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert setup.optimizer.state_dict()["state"] == {}
    assert all(p.grad is None for p in setup.net.parameters())


def test_forecast_arithmetic_per_phase_evaluation_and_total(tiny_spec):
    plan = _plan(tiny_spec)
    profile = _profile()
    forecast = forecast_from_profile(plan.forecast_basis(), profile, measure_seconds=12.0)
    steps, price = plan.steps_per_epoch, plan.training.price.per_device_hour
    warmup, shrinking = forecast.phases
    assert warmup.epochs == 2 and shrinking.epochs == 2 and forecast.epochs == 4
    assert warmup.step_seconds == pytest.approx(0.1)  # the median of the timed steps
    assert warmup.epoch_seconds == pytest.approx(steps * 0.1 + 0.05)
    assert shrinking.epoch_seconds == pytest.approx(steps * 0.3 + 0.05)
    assert warmup.device_hours == pytest.approx(2 * warmup.epoch_seconds * 2 / 3600)
    assert shrinking.dollars == pytest.approx(shrinking.device_hours * price)
    # The set-up is paid once (one stage); the first step's extra time is part of it.
    assert forecast.setup_seconds == pytest.approx(2.0 + (0.3 - 0.1))
    expected = forecast.setup_seconds + 2 * warmup.epoch_seconds + 2 * shrinking.epoch_seconds
    assert forecast.training_seconds == pytest.approx(expected)
    assert forecast.training_device_hours == pytest.approx(expected * 2 / 3600)
    # Evaluation: a line through the two timed subnets' MACs, over the four planned subnets.
    assert forecast.eval_subnets == 4
    assert 4 * 0.5 <= forecast.eval_seconds <= 4 * 1.3
    assert forecast.total_dollars == pytest.approx(forecast.training_dollars + forecast.eval_dollars)
    assert forecast.total_device_hours == pytest.approx(forecast.training_device_hours + forecast.eval_device_hours)
    summary = forecast.summary()
    assert [p["phase"] for p in summary["phases"]] == ["warmup", "shrinking"]
    assert summary["total"]["dollars"] == pytest.approx(forecast.total_dollars, abs=1e-6)


def test_the_forecast_holds_the_start_up_the_diagnostics_and_the_evaluation_workers_start(tiny_spec):
    plan = _plan(tiny_spec)
    profile = replace(_profile(), diagnostics_seconds=4.0, started_at=1_000_030.0)
    bare = forecast_from_profile(plan.forecast_basis(), replace(profile, diagnostics_seconds=0.0, started_at=0.0))
    forecast = forecast_from_profile(plan.forecast_basis(), profile, held_since=1_000_000.0)
    # From the hold's start until the workers began their set-up: the cluster's start and the job's launch.
    assert forecast.startup_seconds == pytest.approx(30.0) and bare.startup_seconds == 0.0
    assert forecast.training_seconds == pytest.approx(bare.training_seconds + 30.0 + 4.0)
    # The evaluation workers start as the training workers did, while the run holds all its devices.
    assert forecast.eval_setup_seconds == pytest.approx(2.0)
    devices, price = plan.training.devices, plan.training.price.per_device_hour
    assert forecast.eval_device_hours == pytest.approx(bare.eval_device_hours)
    assert bare.eval_device_hours == pytest.approx(
        (2.0 * max(devices, bare.eval_devices) + bare.eval_seconds * bare.eval_devices) / 3600
    )
    assert forecast.total_dollars == pytest.approx(bare.total_dollars + 34.0 * devices * price / 3600)
    assert forecast.summary()["overhead_seconds"] == {"startup": 30.0, "diagnostics": 4.0, "evaluation_setup": 2.0}
    assert forecast.wall_seconds == pytest.approx(bare.wall_seconds + 34.0)


def test_the_profile_times_each_diagnostic_once_and_counts_it_at_every_epoch_it_is_taken(tiny_spec, torch_defaults):
    plan = _plan(tiny_spec, evaluation={"diagnostics": {"enabled": True, "heatmap_images": 300}})
    setup = set_up_worker(plan.work, rank=0, world=1, device=torch.device("cpu"))
    clock = ForwardClock()
    hook = register_module_forward_hook(clock.count)
    try:
        with untouched(setup):
            # A heatmap: calibration (128 images in batches of 64) and 300 test images (batches of 256): 4
            # forwards; taken at both phase ends. A gradient probe, once after warmup: the full model alone (no
            # shrinking), then the sandwich's 3 subnets for each of the two shrinking variants.
            seconds = diagnostics_seconds(plan.work, setup.method, setup.net, setup.steps_per_epoch, clock)
            assert seconds == 2 * 4 + (1 + 3 + 3)
    finally:
        hook.remove()
    off = _plan(tiny_spec)
    assert diagnostics_seconds(off.work, setup.method, setup.net, setup.steps_per_epoch, clock) == 0.0


def test_forecast_file_round_trips_and_its_fingerprint_ignores_the_budget(tiny_spec, tmp_path):
    plan = _plan(tiny_spec)
    forecast = forecast_from_profile(plan.forecast_basis(), _profile())
    save_forecast(tmp_path, forecast)
    assert load_forecast(tmp_path) == forecast
    richer = make_plan(load_spec(tiny_spec("fc", budget={"max_dollars": 5.0})))
    assert richer.fingerprint() == plan.fingerprint()
    longer = make_plan(load_spec(tiny_spec("fc", method={"epochs": 6})))
    assert longer.fingerprint() != plan.fingerprint()
    (tmp_path / "forecast.json").write_text('{"run": "x"}')
    assert load_forecast(tmp_path) is None  # an unreadable forecast is measured again, not trusted


def test_estimator_prefers_measured_epochs_and_scales_the_forecast_of_phases_not_reached(tiny_spec):
    plan = _plan(tiny_spec)
    forecast = forecast_from_profile(plan.forecast_basis(), _profile())
    planned_warmup = forecast.epoch_seconds("warmup")
    planned_shrinking = forecast.epoch_seconds("shrinking")
    fresh = EpochCostEstimator(forecast, [])
    assert fresh.epoch_seconds("shrinking") == pytest.approx(planned_shrinking)
    assert fresh.setup_seconds == pytest.approx(forecast.setup_seconds)

    # Warmup ran 1.5x slower than forecast: shrinking, not reached yet, is expected 1.5x slower too.
    rows = [_row(0, "warmup", 1.5 * planned_warmup, overhead=4.0), _row(1, "warmup", 1.5 * planned_warmup)]
    slow = EpochCostEstimator(forecast, rows)
    assert slow.ratio == pytest.approx(1.5)
    assert slow.epoch_seconds("warmup") == pytest.approx(1.5 * planned_warmup)
    assert slow.epoch_seconds("shrinking") == pytest.approx(1.5 * planned_shrinking)
    assert slow.setup_seconds == pytest.approx(4.0)  # measured set-up beats the forecast's
    # Cautious (for the budget): the slowest recent epoch of the phase, or the scaled forecast if larger.
    rows.append(_row(2, "shrinking", 0.5 * planned_shrinking))
    mixed = EpochCostEstimator(forecast, rows)
    assert mixed.epoch_seconds("shrinking") == pytest.approx(0.5 * planned_shrinking)
    assert mixed.epoch_seconds("shrinking", cautious=True) == pytest.approx(planned_shrinking * mixed.ratio)
    assert mixed.cost(3600.0).device_hours == pytest.approx(forecast.devices)
    # Without a forecast, the ledger alone.
    assert EpochCostEstimator(None, rows).epoch_seconds("shrinking") == pytest.approx(0.5 * planned_shrinking)
    assert EpochCostEstimator(None, []).epoch_seconds("warmup") is None


def test_outlook_adds_the_rest_of_the_run_to_what_was_spent(tiny_spec):
    plan = _plan(tiny_spec)
    forecast = forecast_from_profile(plan.forecast_basis(), _profile())
    phases = plan.phases
    fresh = outlook(forecast, phases, [])
    assert fresh.epochs_done == 0 and fresh.epochs_total == 4
    assert fresh.spent.dollars == 0
    assert fresh.total.device_hours == pytest.approx(forecast.total_device_hours)
    assert fresh.remaining_seconds == pytest.approx(forecast.wall_seconds)

    w = forecast.epoch_seconds("warmup")
    rows = [_row(0, "warmup", w, overhead=forecast.setup_seconds), _row(1, "warmup", w)]
    running = outlook(forecast, phases, rows, running=True)
    assert running.epochs_done == 2
    assert running.spent.device_hours == pytest.approx(sum(r["device_hours"] for r in rows))
    assert running.total.device_hours == pytest.approx(forecast.total_device_hours)
    # A run stopped here pays one more set-up when it resumes.
    stopped = outlook(forecast, phases, rows, running=False)
    extra = stopped.total.device_hours - running.total.device_hours
    assert extra == pytest.approx(forecast.setup_seconds * forecast.devices / 3600)


def test_a_median_settles_when_its_last_quarter_no_longer_moves_it():
    assert not median_settled([1.0] * 4, 0.02)  # too few to tell (and one step earlier, fewer still)
    assert median_settled([1.0] * 5, 0.02)
    assert not median_settled([1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0], 0.02)  # still climbing
    noisy = [1.0, 1.2, 0.9, 1.1, 1.0, 1.05, 0.95, 1.0]
    assert median_settled(noisy, 0.06) and not median_settled(noisy[:5], 0.02)


def test_each_phase_is_timed_until_its_median_settles_or_its_cap(tiny_spec, torch_defaults):
    # The clock counts forwards: a warmup step is 1 "second", a shrinking step 3, exactly, so both settle at
    # the fifth timed step, after the two untimed ones.
    plan = _plan(tiny_spec, forecast={"steps": 2, "max_steps": 40, "warmup_steps": 2})
    setup = set_up_worker(plan.work, rank=0, world=1, device=torch.device("cpu"))
    clock = ForwardClock()
    hook = register_module_forward_hook(clock.count)
    try:
        with untouched(setup):
            settled = measure_profile(setup, profile_request(plan), 0.0, clock)
            capped = measure_profile(
                setup,
                profile_request(_plan(tiny_spec, forecast={"steps": 4, "max_steps": 40, "max_seconds": 9.0})),
                0.0,
                clock,
            )
    finally:
        hook.remove()
    assert [len(p.step_seconds) for p in settled.phases] == [5, 5]
    assert [p.step_seconds[0] for p in settled.phases] == [1.0, 3.0]
    # 9 "seconds" a phase: the warmup's 1 s steps settle first (at 5); the 3 s shrinking steps reach the cap
    # at 3, below the 4 every phase gets at least, so they stop at 4.
    assert [len(p.step_seconds) for p in capped.phases] == [5, 4]


def test_identical_work_is_timed_once_across_methods(tiny_spec, torch_defaults, tmp_path):
    import yaml

    deps = _plan(tiny_spec)
    path = tiny_spec("compofa-fc")
    spec = yaml.safe_load(path.read_text())
    spec["method"] = {
        "name": "compofa",
        "teacher_epochs": 1,
        "phase1": {"epochs": 1, "lr": 0.02, "subnets_per_step": 2},
        "phase2": {"epochs": 1, "lr": 0.03, "subnets_per_step": 2, "warmup_epochs": 0},
    }
    path.write_text(yaml.safe_dump(spec))
    compofa = make_plan(load_spec(path))
    with_deps = measure_profile(
        set_up_worker(deps.work, rank=0, world=1, device=torch.device("cpu")), profile_request(deps), 0.0
    )
    known = measured_phases(forecast_from_profile(deps.forecast_basis(), with_deps), "fc")
    request = profile_request(compofa, known)
    profile = measure_profile(set_up_worker(compofa.work, 0, 1, torch.device("cpu")), request, 0.0)
    teacher, *phases = profile.phases
    # CompOFA's teacher phase trains the full model alone, as DepS's warmup does: DepS's timing serves it.
    assert teacher.reused_from == "fc/warmup" and teacher.step_seconds == with_deps.phases[0].step_seconds
    assert teacher.phase == "teacher" and teacher.work_key == with_deps.phases[0].work_key
    assert all(not p.reused_from and p.work_key != teacher.work_key for p in phases)  # their own work: timed
