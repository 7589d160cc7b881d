"""A dry run: the queued steps held against the live experiment, and the time they will take.

Takes the steps (unrolled by plan.expand), the run controller's `status` and
`config` answers and the published numbers seen, and says for each step what
would fail: a program or client that does not exist, settings that break the
program's schema (with what it holds now), a published number nobody
publishes, a reader that is not there. Takes no action and sends nothing.
"""

import json

from clients.sequences.runner import estimate_s, wanted_values
from runcontrol import configschema


def dry_run(queued, status, config, values, hard_only=False):
    """`queued`: [(sequence name, steps)]; `status`, `config`: the run controller's answers (protocol.Answer);
    `values`: conditions.Values. The verdict: ok, every problem with its step's path, the count and the estimate.
    `hard_only`: only what cannot come right by itself (a program or setting that does not exist, settings that
    break a schema), not what may (a client not registered yet, a number not published yet): what `queue` refuses."""
    problems = []
    if not status.ok or not config.ok:
        problems.append(f"the run controller did not answer: {status.error or config.error}")
        programs, clients, settings = {}, set(), {}
    else:
        programs = status.result.get("programs", {})
        clients = set(status.result.get("clients", []))
        clients |= {p.get("client") for p in programs.values() if p.get("client")}
        settings = config.result if isinstance(config.result, dict) else {}
    checked = {}
    steps_total, estimate = 0, 0.0
    for name, steps in queued:
        for step in steps:
            steps_total += 1
            estimate += estimate_s(step)
            for problem, hard in step_problems(step, programs, clients, settings, values, checked):
                if hard or not hard_only:
                    problems.append(f"{step.where}: {problem}")
    return {"ok": not problems, "problems": problems, "sequences": len(queued), "steps": steps_total,
            "estimate_s": round(estimate, 1)}


def step_problems(step, programs, clients, settings, values, checked):
    """(problem, hard) for each thing wrong with `step` against the experiment."""
    spec = step.spec
    found = []
    if step.kind == "set":
        program = spec["program"]
        if program not in programs:
            known = ", ".join(sorted(programs)) or "none"
            found.append((f"no program {program!r} in the experiment (known: {known})", True))
        elif program not in settings:
            found.append((f"program {program!r} has no settings", True))
        else:
            key = (program, json.dumps(spec["values"], sort_keys=True, default=str))
            if key not in checked:
                held = settings[program]
                merged = {**(held.get("values") or {}), **spec["values"]}
                checked[key] = configschema.problems(merged, held.get("schema") or {}, f"{program}")
            found += [(problem, True) for problem in checked[key]]
    elif step.kind == "command" and spec["to"] not in clients and spec["to"] != "run":
        found.append((f"no client {spec['to']!r} is registered", False))
    elif step.kind == "run" and "images" in spec and spec["images"]["reader"] not in clients:
        found.append((f"no reader {spec['images']['reader']!r} is registered", False))
    for name in wanted_values(step):
        if values.value(name) is None:
            found.append((f"no program has published {name!r}", False))
    return found
