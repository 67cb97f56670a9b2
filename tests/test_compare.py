"""`deps-orch compare`: the numbers, against values worked out by hand, in every format, and its errors."""

import contextlib
import csv
import io
import json

import pytest

from orchestrator.cli import main
from orchestrator.errors import UserError
from orchestrator.reports.compare import compare, plots_dir_name, render, resolve_runs
from tests.conftest import deps_orch
from tests.test_results_dataset import PRICE, write_run


@pytest.fixture
def root(tmp_path):
    # One comparison of two methods on a supernet of 100-700 MACs (buckets of 100), and a run outside it.
    write_run(
        tmp_path,
        "cmp-deps",
        "deps",
        [(100, 50.0), (400, 70.0), (450, 60.0)],
        [("warmup", 10), ("shrinking", 40)],
        "cmp",
    )
    write_run(tmp_path, "cmp-ofa", "ofa", [(100, 45.0), (700, 75.0)], [("teacher", 10)] * 3, "cmp")
    write_run(tmp_path, "other", "deps", [(300, 60.0)], [("warmup", 5)], None, mac_range=(100, 900))
    return tmp_path


def test_the_comparison_by_hand(root):
    comparison = compare(resolve_runs([], "cmp", root))
    assert comparison.buckets.edges == [100, 200, 300, 400, 500, 600, 700]
    deps, ofa = comparison.rows
    assert (deps["run"], deps["method"], deps["group"], ofa["method"]) == ("cmp-deps", "deps", "cmp", "ofa")
    # Fronts over normalised MACs: deps (0, 50 %) to (0.5, 70 %), then flat; ofa (0, 45 %) to (1, 75 %).
    assert deps["mean_pareto_top1"] == pytest.approx(0.5 * 60 + 0.5 * 70) and ofa["mean_pareto_top1"] == 60.0
    assert (deps["smallest_top1"], deps["smallest_mmacs"], deps["largest_top1"]) == (50.0, 1e-4, 60.0)
    assert [b["top1"] for b in deps["buckets"]] == [50.0, None, None, 70.0, None, None]  # 450's 60 loses to 400's 70
    assert [b["top1"] for b in ofa["buckets"]] == [45.0, None, None, None, None, 75.0]
    assert deps["buckets"][3]["mmacs"] == pytest.approx(400e-6) and deps["buckets"][3]["subnet_id"] == "cmp-deps-1"
    # Costs: 2 devices at $0.05 per device-hour; 50 s of training, 3 subnets of 1 s on 1 device.
    train_hours, eval_hours = 50 * 2 / 3600, 3 / 3600
    assert deps["epochs"] == 2 and deps["device_minutes_per_epoch"] == pytest.approx(train_hours * 60 / 2)
    assert deps["train_dollars"] == pytest.approx(train_hours * PRICE)
    assert deps["eval_device_hours"] == pytest.approx(eval_hours)
    total = (train_hours + eval_hours) * PRICE
    assert deps["total_dollars"] == pytest.approx(total)
    assert deps["top1_gain_per_dollar"] == pytest.approx((65.0 - 10.0) / total)  # 10 classes: chance is 10 %


def test_runs_of_different_supernets(root):
    comparison = compare(resolve_runs(["cmp-deps", str(root / "other")], None, root), bucket_count=4)
    deps, other = comparison.rows
    # The buckets span both supernets; mean Pareto accuracy is over each run's own supernet range,
    # and also given over the common range, where budgets a supernet cannot serve count as 0.
    assert (comparison.buckets.lo, comparison.buckets.hi) == (100, 900)
    assert deps["range_mmacs"] == [1e-4, 7e-4] and other["range_mmacs"] == [1e-4, 9e-4]
    assert deps["mean_pareto_top1"] == pytest.approx(65.0)
    assert deps["mean_pareto_top1_common_range"] == pytest.approx(60 * 3 / 8 + 70 * 5 / 8)
    assert other["mean_pareto_top1"] == other["mean_pareto_top1_common_range"] == pytest.approx(60 * 6 / 8)
    table = render(comparison)
    assert "| MMAC range | mean Pareto top-1, common range |" in table and "| 0.0001-0.0007 | 66.25 |" in table
    assert "MMAC range" not in render(compare(resolve_runs([], "cmp", root)))  # one range: no need


def test_compare_cli_markdown_csv_json_and_plots(root, capsys):
    result = deps_orch("compare", "--group", "cmp", "--root", str(root))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("## Comparison: cmp")
    assert "| cmp-deps | deps | – | 3 | 50.00 @ 0.0001 | 60.00 @ 0.00045 | 65.00 | 2 |" in out
    assert "| 4 | 0.0004-0.0005 | 70.00 @ 0.0004 | – |" in out  # best subnet per bucket, one column per run
    plots = root / "_compare" / "cmp"
    assert f"![pareto]({plots / 'pareto.png'})" in out and f"![cost]({plots / 'cost.png'})" in out
    assert (plots / "pareto.png").stat().st_size > 10_000 and (plots / "cost.png").exists()
    assert not (plots / "gradients.png").exists()  # no diagnostics in these runs: no empty plot

    # The other formats in-process (the same entry point without another interpreter start-up).
    assert main(["compare", "cmp-deps", "cmp-ofa", "--root", str(root), "--format", "csv", "--no-plots"]) == 0
    as_csv = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(as_csv.out)))
    assert [r["run"] for r in rows] == ["cmp-deps", "cmp-ofa"] and float(rows[1]["bucket6_top1"]) == 75.0
    assert float(rows[0]["mean_pareto_top1"]) == pytest.approx(65.0) and rows[0]["bucket2_top1"] == ""
    assert as_csv.err == ""

    assert main(["compare", "--group", "cmp", "--root", str(root), "--format", "json", "--plots", str(root / "p")]) == 0
    as_json = capsys.readouterr()
    document = json.loads(as_json.out)
    assert document["bucket_edges_mmacs"] == pytest.approx([i / 1e4 for i in range(1, 8)])
    assert [r["run"] for r in document["runs"]] == ["cmp-deps", "cmp-ofa"]
    assert document["runs"][1]["buckets"][5]["top1"] == 75.0
    assert document["plots"] == [str(root / "p" / "pareto.png"), str(root / "p" / "cost.png")]
    assert "plots:" in as_json.err


@pytest.mark.parametrize(
    "args,message",
    [
        ([], "compare: name runs (RUN ...) or a comparison (--group NAME), not both and not neither"),
        (["cmp-deps", "--group", "cmp"], "not both and not neither"),
        (["nope"], "nope: no run there"),
        (["--group", "nope"], "--group nope: no runs of that comparison under {root} (comparisons there: cmp)"),
        (["cmp-deps", "--buckets", "0"], "--buckets: 0; needs at least 1"),
        (["cmp-deps", "--format", "table"], "argument --format: invalid choice: 'table'"),
    ],
)
def test_compare_errors_are_one_line_exit_2(root, args, message, capsys):
    with pytest.raises(SystemExit) if "--format" in args else contextlib.nullcontext():
        code = main(["compare", *args, "--root", str(root)])
        assert code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message.format(root=root) in err, err


def test_plots_go_to_a_directory_no_run_can_be_named():
    assert plots_dir_name(["a", "b"], None) == "a+b"
    assert plots_dir_name(["x"] * 60, None).startswith("x+x") and len(plots_dir_name(["x"] * 60, None)) == 73
    assert plots_dir_name(["a"], "grp") == "grp"
    with pytest.raises(UserError):
        resolve_runs([], None, ".")
    with pytest.raises(ValueError, match="allowed: markdown, csv, json"):
        render(compare([]), "table")
