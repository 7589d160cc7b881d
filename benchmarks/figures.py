"""The figures of a benchmark run: each script's tables, and its figures against references and targets.

A script makes a `Report`, adds its tables and figures, and ends with `finish()`: it prints the
report's text and writes its section of `benchmarks/results/<date>.json` (or of the file
`runner.py` names in $ORBIT_BENCH_RESULTS). `report.py` writes the same text (`markdown`) into
`benchmarks/README.md`, so a figure in the README is one a script printed. Must not start processes
or measure anything but the machine's load around a script.
"""

import datetime
import fcntl
import json
import operator
import os
import platform
import resource
import sys
import time
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FILE_ENV = "ORBIT_BENCH_RESULTS"   # runner.py: every script of one run writes to this file
RUN_ENV = "ORBIT_BENCH_RUN"        # runner.py: the run's id, so its summary takes no other run's figures
OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
VERDICTS = {True: "met", False: "NOT met"}


def results_path():
    given = os.environ.get(FILE_ENV)
    return Path(given) if given else RESULTS / f"{datetime.date.today().isoformat()}.json"


class Report:
    """What one script measured; `script` names its section in the results file and its block in the README."""

    def __init__(self, script, **parameters):
        self.script = script
        self.parameters = parameters
        self.tables, self.figures, self.notes = [], [], []
        self.started = datetime.datetime.now().astimezone()
        self._wall = time.monotonic()
        self._busy = machine_busy_s()
        self._ours = own_cpu_s()
        self._load = os.getloadavg()[0]

    def table(self, header, rows, title=None):
        self.tables.append({"title": title, "header": [str(h) for h in header],
                            "rows": [[str(cell) for cell in row] for row in rows]})

    def note(self, text):
        """A line of the report that is neither a table nor a figure (what a figure leaves out, say)."""
        self.notes.append(text)

    def figure(self, name, value, fmt, reference=None, versus=None, target=None, on="value"):
        """One figure, `fmt` formatting it (and its reference and limit).

        `reference`: the same quantity measured in this run by what `versus` names; the ratio is value / reference.
        `target`: (op, limit), checked on the value, on the ratio (`on="ratio"`) or on value - reference
        (`on="excess"`).
        """
        entry = {"name": name, "value": value, "text": fmt.format(value)}
        if reference is not None:
            entry.update(reference=reference, versus=versus, reference_text=fmt.format(reference),
                         ratio=value / reference if reference and on != "excess" else None)
        if target is not None:
            op, limit = target
            checked = {"value": value, "ratio": entry.get("ratio"),
                       "excess": None if reference is None else value - reference}[on]
            limit_text = fmt.format(limit).lstrip("+")
            entry["target"] = {"value": f"{op} {limit_text}", "ratio": f"ratio {op} {limit:g}",
                               "excess": f"{op} {limit_text} above the reference"}[on]
            entry["met"] = checked is not None and OPS[op](checked, limit)
            if not entry["met"] and on == "value" and reference is not None and not OPS[op](reference, limit):
                entry["reference_misses"] = True   # the reference measured beside it misses the target too
        self.figures.append(entry)
        return entry

    def section(self):
        wall = time.monotonic() - self._wall
        others = max(0.0, (machine_busy_s() - self._busy) - (own_cpu_s() - self._ours)) / wall
        return {"script": self.script, "run": os.environ.get(RUN_ENV), "argv": sys.argv[1:],
                "parameters": self.parameters, "started": self.started.isoformat(timespec="seconds"),
                "seconds": round(wall, 1), "load_at_start": round(self._load, 2),
                "others_cores": round(others, 2), "cores": os.cpu_count(),
                "tables": self.tables, "figures": self.figures, "notes": self.notes}

    def finish(self):
        """Print the report, write it to the results file; the exit status (1 when a target was missed)."""
        section = self.section()
        print()
        print(markdown(section), flush=True)
        save(section)
        print(f"\n(written to {results_path()})")
        return 1 if any(f.get("met") is False for f in self.figures) else 0


def machine_busy_s():
    """CPU seconds the whole machine has spent busy since boot (every process, ours and others')."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, stat.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_s():
    """CPU seconds of this process and of every process it (or they) started and reaped."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def machine():
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    versions = {}
    for package in ("pyzmq", "orjson", "uvloop", "aiohttp", "supervisor"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "system": platform.platform(), "packages": versions}


def load(path):
    return json.loads(Path(path).read_text())


def save(section):
    """Put `section` in the results file under its script's name, replacing what an earlier run left there."""
    update(section["script"], lambda _old: section)


def record(script, **fields):
    """Add `fields` to the script's section (runner.py: exit status, time); a section of another run, or none,
    is replaced by one holding only these fields."""
    run = os.environ.get(RUN_ENV)
    update(script, lambda old: {**old, **fields} if old and old.get("run") == run
           else {"script": script, "run": run, "tables": [], "figures": [], "notes": [], **fields})


def update(script, change):
    path = results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)   # a script and the runner never write the file at once
        data = load(path) if path.exists() else {"machine": machine(), "scripts": {}}
        data["scripts"][script] = change(data["scripts"].get(script))
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(temporary, path)
    finally:
        os.close(folder)


# --- text ----------------------------------------------------------------------------------------------

def markdown_table(table):
    lines = [f"**{table['title']}**", ""] if table.get("title") else []
    lines.append("| " + " | ".join(table["header"]) + " |")
    lines.append("|" + "---|" * len(table["header"]))
    lines.extend("| " + " | ".join(row) + " |" for row in table["rows"])
    return "\n".join(lines)


def verdict(entry):
    if "met" not in entry:
        return ""
    return VERDICTS[entry["met"]] + (" (the reference too)" if entry.get("reference_misses") else "")


def figure_line(entry):
    text = f"- {entry['name']}: **{entry['text']}**"
    if "reference" in entry:
        ratio = "" if entry.get("ratio") is None else f", ratio {entry['ratio']:.2f}"
        text += f" against {entry['reference_text']} ({entry['versus']}{ratio})"
    if "target" in entry:
        text += f"; target {entry['target']}: {verdict(entry)}"
    return text


def measured_line(section):
    if not section.get("started"):
        return ""
    arguments = f" (`{' '.join(section['argv'])}`)" if section.get("argv") else ""
    return (f"Measured {section['started'][:16].replace('T', ' ')} in {section['seconds']:.0f} s{arguments}; "
            f"other processes used {section['others_cores']:.2f} of {section['cores']} cores meanwhile "
            f"(load average {section['load_at_start']:.2f} at the start).")


def markdown(section):
    """The report of one script, as it prints it and as the README shows it."""
    parts = [markdown_table(t) for t in section.get("tables", [])]
    lines = [figure_line(f) for f in section.get("figures", [])] + [f"- {n}" for n in section.get("notes", [])]
    if lines:
        parts.append("\n".join(lines))
    if section.get("failure"):
        parts.append(f"**The script failed in this run ({section['failure']}): figures missing.**")
    measured = measured_line(section)
    if measured:
        parts.append(measured)
    return "\n\n".join(parts)


def summary_rows(data, run=None):
    """(script, figure, value, reference, ratio, target, verdict) of every figure of the run `run` (any when None),
    and a row for each script that ended badly."""
    rows = []
    for name, section in data["scripts"].items():
        if run is not None and section.get("run") != run:
            continue
        for entry in section.get("figures", []):
            ratio = entry.get("ratio")
            rows.append((name, entry["name"], entry["text"], entry.get("reference_text", ""),
                         "" if ratio is None else f"{ratio:.2f}", entry.get("target", ""), verdict(entry)))
        if section.get("failure"):
            rows.append((name, "(the script)", "", "", "", "", f"FAILED: {section['failure']}"))
    return rows


def missed(rows):
    return [row for row in rows if row[6].startswith(("NOT met", "FAILED"))]


def summary_table(rows):
    header = ("script", "figure", "value", "reference", "ratio", "target", "verdict")
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    widths[1] = min(widths[1], 60)
    lines = ["  ".join(str(cell).ljust(widths[i]) if i != 1 else str(cell)[:60].ljust(widths[i])
                       for i, cell in enumerate(row)).rstrip() for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
