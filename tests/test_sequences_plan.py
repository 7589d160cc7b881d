"""Sequence files checked and unrolled (a core without I/O: the sequencer that takes the steps is tested end to end
in test_sequencer.py)."""

import json

import pytest

from clients.sequences import plan
from runcontrol.errors import ConfigError

SCAN = {
    "name": "bias_scan",
    "variables": {"exposures": 2},
    "steps": [
        {"for": {"volts": [40, 50], "steps": [
            {"set": {"program": "bias", "values": {"volts": "{volts}"}}},
            {"wait": {"value": "bias.values.volts", "near": "{volts}", "within": 0.5, "for": 5, "timeout": 120}},
            {"repeat": {"times": 2, "as": "i", "steps": [
                {"run": {"comment": "bias scan {volts} V, exposure {i}", "params": {"seconds": 600}, "seconds": 610}}]}},
        ]}},
        {"call": {"sequence": "darks", "with": {"exposure": 60}}},
    ],
}
DARKS = {"name": "darks", "variables": {"exposure": None},
         "steps": [{"for": {"seconds": {"from": 1, "to": 3, "step": 2},
                            "steps": [{"run": {"comment": "dark {seconds}x{exposure}", "seconds": "{exposure}"}}]}}]}


def library(tmp_path, *sequences):
    for raw in sequences:
        (tmp_path / f"{raw['name']}.json").write_text(json.dumps(raw))
    return plan.Library(tmp_path)


def test_loops_unroll_in_order_with_their_values_and_a_call_opens_with_what_it_is_given(tmp_path):
    lib = library(tmp_path, SCAN, DARKS)
    steps = plan.expand(lib.get("bias_scan"), lib)
    assert [s.kind for s in steps] == ["set", "wait", "run", "run"] * 2 + ["run", "run"]
    assert steps[0].spec == {"program": "bias", "values": {"volts": 40}}   # "{volts}" alone keeps the number
    assert steps[1].spec["near"] == 40 and steps[1].loop == {"volts": 40}
    assert [s.spec["comment"] for s in steps if s.kind == "run"][:4] == [
        "bias scan 40 V, exposure 1", "bias scan 40 V, exposure 2", "bias scan 50 V, exposure 1",
        "bias scan 50 V, exposure 2"]
    assert steps[7].loop == {"volts": 50, "i": 2}
    assert steps[7].where == "bias_scan.steps.0.for[volts=50].steps.2.repeat[i=2].steps.0.run"
    darks = steps[8:]
    assert [(s.sequence, s.spec["comment"], s.spec["seconds"]) for s in darks] == [
        ("darks", "dark 1x60", 60), ("darks", "dark 3x60", 60)]   # a range includes its end
    assert [s.index for s in steps] == list(range(10))


@pytest.mark.parametrize("raw, problems", [
    ({"steps": [{"sleep": 5}]}, ["steps.0: 'sleep' is no kind of step (run, set, wait, command, pause, repeat, "
                                 "for, call)"]),
    ({"steps": [{"run": {}, "set": {"program": "b", "values": {"x": 1}}}]},
     ["steps.0: a step is exactly one of run, set, wait, command, pause, repeat, for, call (it has run, set)"]),
    ({"steps": [{"for": {"v": [], "steps": []}}]}, ["steps.0.for.v: a loop over nothing"]),
    ({"steps": [{"for": {"v": {"from": 5, "to": 1}, "steps": []}}]}, ["steps.0.for.v: a loop over nothing"]),
    ({"steps": [{"run": {"comment": "at {volts} V"}}]}, ["steps.0.run: {volts} names no variable (known here: none)"]),
    ({"steps": [{"repeat": {"times": 0, "steps": []}}]}, ["steps.0.repeat.times: 0 is less than the minimum of 1"]),
    ({"steps": [{"wait": {"value": "x", "above": 1, "on_timeout": "cry"}}]},
     ["steps.0.wait.on_timeout: 'cry' is not one of ['fail', 'skip', 'pause']"]),
    ({"steps": [{"set": {"program": "bias"}}]}, ["steps.0.set: 'values' is required"]),
])
def test_a_bad_sequence_is_refused_with_every_problem_and_its_path(raw, problems):
    with pytest.raises(ConfigError) as refused:
        plan.parse(raw, "bad")
    assert sorted(refused.value.problems) == sorted(problems)


def test_calls_in_a_circle_or_to_no_sequence_or_without_what_they_need_are_refused(tmp_path):
    a = {"name": "a", "steps": [{"call": {"sequence": "b"}}]}
    b = {"name": "b", "steps": [{"pause": {}}, {"call": {"sequence": "a"}}]}
    lib = library(tmp_path, a, b, DARKS, {"name": "lonely", "steps": [{"call": {"sequence": "nowhere"}}]},
                  {"name": "needy", "steps": [{"call": {"sequence": "darks"}}]})
    with pytest.raises(ConfigError, match=r"in a circle: a -> b -> a"):
        plan.expand(lib.get("a"), lib)
    with pytest.raises(ConfigError, match=r"no sequence 'nowhere'"):
        plan.expand(lib.get("lonely"), lib)
    with pytest.raises(ConfigError, match=r"darks needs exposure, which the call does not give"):
        plan.expand(lib.get("needy"), lib)
    with pytest.raises(ConfigError, match=r"no value for exposure"):
        plan.expand(lib.get("darks"), lib)
    assert len(plan.expand(lib.get("darks"), lib, {"exposure": 5})) == 2


def test_a_file_that_is_not_json_says_where(tmp_path):
    (tmp_path / "broken.json").write_text('{"steps": [\n{"run": }]}')
    with pytest.raises(ConfigError) as refused:
        plan.Library(tmp_path).get("broken")
    assert refused.value.problems == ["line 2 column 9: Expecting value"]
