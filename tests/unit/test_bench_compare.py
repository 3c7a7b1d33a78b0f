"""bench/compare.py: the ratios it rebuilds from samples, the noise bands, what it flags."""

import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "bench_compare", Path(__file__).resolve().parents[2] / "bench" / "compare.py"
)
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def run(raw, cil, bridge=None):
    """A results file with one throughput group: raw first, as bench/run.py writes it."""
    paths = {"raw": raw, "cil-0": cil}
    if bridge is not None:
        paths["bridge"] = bridge
    return {"date": "x", "throughput": {"samples": {"v6": paths}, "summary": {}}}


def test_ratios_are_medians_of_per_round_ratios_to_the_first_path():
    ratios = compare.ratios(run([10, 20, 40], [5, 20, 60]))
    # per round 0.5, 1.0, 1.5: the median of those, not 20/20
    assert ratios == {"throughput/v6: cil-0 / raw": 1.0}


def test_nested_measures_name_their_group():
    result = {"rr": {"samples": {"crr": {"v4": {"raw": [2.0], "bridge": [1.0]}}}}}
    assert compare.ratios(result) == {"rr/crr/v4: bridge / raw": 0.5}


def test_noise_band_is_the_largest_difference_between_repeats():
    runs = [run([10], [10]), run([10], [9]), run([10], [11.5])]
    assert compare.measure_noise(runs, 0.01) == {"throughput/v6: cil-0 / raw": 0.25}


def test_a_change_beyond_the_band_is_flagged_and_sets_the_exit_code(tmp_path, capsys):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(run([10, 10], [10, 10], bridge=[10, 10])))
    new.write_text(json.dumps(run([10, 10], [8, 8], bridge=[10.2, 10.2])))
    noise = tmp_path / "noise.json"
    noise.write_text(json.dumps({"throughput/v6: cil-0 / raw": 0.1}))
    assert compare.main([str(old), str(new), "--noise", str(noise)]) == 1
    out = capsys.readouterr().out
    # cil-0 / raw and cil-0 / bridge moved; bridge / raw (1.0 -> 1.02) held
    assert "3 ratios in both runs, 2 moved" in out
    assert "cil-0 / raw" in out and "cil-0 / bridge" in out and "bridge / raw" not in out


def test_nothing_moved_exits_zero(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps(run([10], [10])))
    assert compare.main([str(old), str(old), "--noise", str(tmp_path / "none.json")]) == 0


def test_pycilium_is_compared_with_every_reference_of_its_group_and_the_same_rule_count():
    names = ["raw", "raw-nat", "bridge", "ipt-0", "ipt-10000", "cil-0", "cil-10000"]
    pairs = compare.pairs(names)
    assert [p for p in pairs if p[0] == "cil-10000"] == [
        ("cil-10000", "raw"),
        ("cil-10000", "raw-nat"),
        ("cil-10000", "bridge"),
        ("cil-10000", "ipt-10000"),
    ]
    # the bridge carries Docker's DNS NAT rules too: it is compared with raw-nat as well
    assert ("bridge", "raw-nat") in pairs
    assert ("raw-nat", "raw") in pairs and ("ipt-0", "bridge") not in pairs


def test_a_vip_is_compared_with_its_own_backend_count_directly_in_turn():
    pairs = compare.pairs(["direct", "rot-2", "vip-2", "rot-16", "vip-16"])
    assert ("vip-2", "rot-2") in pairs and ("vip-16", "rot-16") in pairs
    assert ("vip-2", "rot-16") not in pairs and ("vip-16", "rot-2") not in pairs


def test_a_reference_the_group_lacks_is_left_out():
    # results written before raw-nat existed: no such ratio, and no error
    assert compare.pairs(["raw", "bridge", "cil-0"]) == [
        ("bridge", "raw"),
        ("cil-0", "raw"),
        ("cil-0", "bridge"),
    ]


def test_ratios_against_a_second_reference_use_its_rounds():
    result = {
        "rr": {
            "samples": {
                "crr": {"v4": {"raw": [4.0, 4.0], "raw-nat": [2.0, 4.0], "cil-0": [3.0, 3.0]}}
            }
        }
    }
    ratios = compare.ratios(result)
    assert ratios["rr/crr/v4: cil-0 / raw-nat"] == (1.5 + 0.75) / 2
    assert ratios["rr/crr/v4: cil-0 / raw"] == 0.75


def test_the_runs_a_band_was_measured_from_do_not_move_beyond_it():
    runs = [run([3.0], [1.0]), run([3.0], [2.0])]  # 1/3 and 2/3: the difference 0.3333...
    bands = compare.measure_noise(runs, 0.01)
    assert not any(row[5] for row in compare.compare(*runs, bands, 0.01))
