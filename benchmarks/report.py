"""Fill benchmarks/README.md from a results file: the text between `<!-- bench:NAME -->` and
`<!-- /bench:NAME -->` becomes what bench_NAME.py printed in that run (its tables and figures), and the
block `bench:machine` says which run, on what machine, and how loaded it was.

Run: python benchmarks/report.py benchmarks/results/<date>.json [--readme PATH] [--summary] [--quick-ok]
  --summary: only print every figure against its target (as runner.py does at the end of a run).
"""

import argparse
import re
import sys
from pathlib import Path

import figures

HERE = Path(__file__).resolve().parent
LOADED_CORES = 0.25   # other processes using more than this on average: the README says the machine was loaded


def machine_text(data, path):
    sections = [s for s in data["scripts"].values() if s.get("started")]
    machine = data["machine"]
    packages = ", ".join(f"{name} {version}" for name, version in machine["packages"].items() if version)
    runs = {}
    for section in sections:
        runs.setdefault(section.get("run"), []).append(section)
    origin = "; ".join(
        f"{len(group)} in one run of runner.py started {run[:16].replace('T', ' ')}" if run else
        ", ".join(f"bench_{s['script']}.py alone at {s['started'][:16].replace('T', ' ')}" for s in group)
        for run, group in sorted(runs.items(), key=lambda item: item[1][0]["started"]))
    others = [(s["others_cores"], s["script"]) for s in sections]
    mean = sum(o for o, _ in others) / len(others) if others else 0.0
    busiest = max(others, default=(0.0, ""))
    total = sum(s.get("script_seconds", s["seconds"]) for s in sections) / 60
    loaded = (f"The machine was shared and loaded: other processes used {mean:.2f} of "
              f"{machine['cores']} cores on average while the scripts ran, up to {busiest[0]:.2f} during "
              f"bench_{busiest[1]}.py. Absolute times and CPU shares move with that load; a ratio to a reference "
              f"measured beside it moves less, but moves too where the load changed between the two."
              if busiest[0] > LOADED_CORES else
              f"Other processes used {mean:.2f} of {machine['cores']} cores on average while the scripts ran "
              f"(at most {busiest[0]:.2f}): the machine was quiet.")
    return (f"Figures below: `benchmarks/results/{path.name}`, {len(sections)} scripts ({origin}; "
            f"{total:.0f} min in all), on {machine['cores']} cores ({machine['cpu']}), "
            f"Python {machine['python']}, {packages}. {loaded} Each section says when its script ran, with "
            f"what arguments (none: its defaults) and how busy the machine was meanwhile.")


def fill(readme, data, path, quick_ok):
    text = readme.read_text()
    blocks = {"machine": machine_text(data, path)}
    for name, section in data["scripts"].items():
        if section.get("quick") and not quick_ok:
            raise SystemExit(f"{path}: bench_{name}.py ran with --quick arguments: not README figures "
                             "(--quick-ok to use them anyway)")
        blocks[name] = figures.markdown(section)
    missing = []
    for name, body in blocks.items():
        pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
        text, count = pattern.subn(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text)
        if not count:
            missing.append(name)
    readme.write_text(text)
    return missing


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--readme", type=Path, default=HERE / "README.md")
    parser.add_argument("--summary", action="store_true")
    parser.add_argument("--quick-ok", action="store_true")
    args = parser.parse_args()
    data = figures.load(args.results)
    if args.summary:
        rows = figures.summary_rows(data)
        print(figures.summary_table(rows))
        return 1 if figures.missed(rows) else 0
    missing = fill(args.readme, data, args.results, args.quick_ok)
    for name in missing:
        print(f"{args.readme}: no block <!-- bench:{name} --> ... <!-- /bench:{name} -->", file=sys.stderr)
    print(f"{args.readme}: {len(data['scripts']) + 1 - len(missing)} blocks filled from {args.results}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
