"""The data path: UDP packets into files, through a bare asyncio loop and through our receiver and acquisition loop.

For packets of 1 KiB and 8 KiB, a sender process sends 2 s worth at each of a
ladder of rates; the receiver appends every packet to a file. (a) bare: an
asyncio datagram protocol that writes each packet; (b) orbit: a `Receiver`
feeding an `Acquisition` whose writer appends the same bytes (the queue, the
counters, the run folder and file rotation on the way), on asyncio's own loop;
(c) the same on uvloop (when installed). Both get the same 16 MB kernel buffer.
Reported: the highest rate with no loss (packets/s, MB/s), and the loss at the
next step up. Target: (b) at least 70 % of (a) at both sizes.

Run: python benchmarks/bench_datapath.py [--seconds 2]
"""

import argparse
import asyncio
import importlib.util
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import common
from figures import Report

RATES = {1024: [10000, 15000, 20000, 25000, 30000, 35000, 40000, 50000, 60000, 80000, 100000, 120000],
         8192: [5000, 7500, 10000, 12500, 15000, 17500, 20000, 25000, 30000]}
SETTLE_S = 1.0


def serve_bare(port, path):
    from clients.kit.receiver import enlarge_receive_buffer

    class Append(asyncio.DatagramProtocol):
        def __init__(self, out):
            self.out = out

        def datagram_received(self, data, addr):
            self.out.write(data)

    async def run():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", port))
        enlarge_receive_buffer(sock)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        with open(path, "ab") as out:
            await asyncio.get_running_loop().create_datagram_endpoint(lambda: Append(out), sock=sock)
            print("ready", flush=True)
            await stop.wait()
    asyncio.run(run())


def serve_kit(port, folder, use_uvloop, nowhere, beacon_port):
    from clients.kit.acquisition import Acquisition, Source, Writer
    from clients.kit.receiver import Receiver

    class Append(Writer):
        suffix = ".bin"

        def open(self, path, run):
            self.out = open(path, "ab")

        def write(self, item):
            self.out.write(item)
            return len(item)

        def close(self):
            self.out.close()

    class Bench(Receiver):
        async def handle_packet(self, data, source):
            self.acquisition.feed(data)

        async def main(self):
            print("ready", flush=True)   # listening: main() runs once every listener is open
            self.acquisition.begin(1, {})
            await self.stopping.wait()
            self.acquisition.end()

    # No server: the data path alone. Its bus address is a port of the benchmark's block where nothing listens.
    bench = Bench(f"bench-kit-{os.getpid()}", server=f"tcp://127.0.0.1:{nowhere}", beacon_port=beacon_port)
    bench.acquisition = Acquisition(Source(), Append(), lambda data: [data], Path(folder), per_file=10 ** 9)
    bench.listen_udp("127.0.0.1", port)
    try:
        bench.serve(use_uvloop=use_uvloop)
    finally:
        bench.close()


def send(port, size, rate, seconds):
    """Send `rate` packets a second for `seconds`, in bursts of 100; the count sent."""
    payload = b"x" * size
    target = ("127.0.0.1", port)
    count = int(rate * seconds)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        start = time.perf_counter()
        for n in range(0, count, 100):
            for _ in range(min(100, count - n)):
                out.sendto(payload, target)
            ahead = start + (n + 100) / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
    return count


def received(path, size):
    files = [path] if path.is_file() else list(path.rglob("*.bin"))
    return sum(f.stat().st_size for f in files) // size


def wait_ready(proc, timeout_s=20):
    """Until the receiver says it listens."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.1)[0]:
            line = proc.stdout.readline()
            if line.strip() == b"ready":
                return
            if not line:
                break
    raise RuntimeError(f"the receiver did not start listening (exit status {proc.poll()})")


def measure(kind, size, seconds, nowhere):
    folder = common.scratch(f"orbit-bench-data-{kind}-")
    results = []
    for rate in RATES[size]:
        port = common.free_port()
        target = folder / f"{rate}" if kind != "bare" else folder / f"{rate}.bin"
        argv = {"bare": ["--serve-bare", str(port), str(target)],
                "orbit": ["--serve-kit", str(port), str(target), *nowhere],
                "orbit+uvloop": ["--serve-kit", str(port), str(target), *nowhere, "--uvloop"]}[kind]
        proc = subprocess.Popen([sys.executable, __file__, *argv], cwd=common.ROOT, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(common.ROOT)}, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        try:
            wait_ready(proc)
            sent = send(port, size, rate, seconds)
            time.sleep(SETTLE_S)
        finally:
            common.stop_group(proc)
            proc.stdout.close()
        got = received(target, size)
        results.append((rate, sent, got))
        if got < sent * 0.999:
            break  # lost above this: the next steps only lose more
    return results


def best_rate(results):
    """(the highest rate with no loss, (rate, loss) at the first step that lost, or None)."""
    clean = [r for r in results if r[2] >= r[1] * 0.999]
    lossy = next((r for r in results if r[2] < r[1] * 0.999), None)
    return (clean[-1][0] if clean else 0), (None if lossy is None else (lossy[0], 1 - lossy[2] / lossy[1]))


def cell(size, best, lossy):
    text = f"{best:,}/s ({best * size / 1e6:.0f} MB/s)"
    return text + (f"; {100 * lossy[1]:.1f} % lost at {lossy[0]:,}" if lossy else ", the top of the ladder")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--serve-bare", nargs=2)
    parser.add_argument("--serve-kit", nargs=4)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    if args.serve_bare:
        return serve_bare(int(args.serve_bare[0]), args.serve_bare[1])
    if args.serve_kit:
        port, folder, nowhere, beacon = args.serve_kit
        return serve_kit(int(port), folder, True if args.uvloop else False, int(nowhere), int(beacon))
    common.exit_on_sigterm()
    report = Report("datapath", seconds=args.seconds)
    nowhere = [str(common.free_port()), str(common.free_port())]   # the kit's bus address and beacon port: unused
    kinds = ("bare", "orbit", "orbit+uvloop") if importlib.util.find_spec("uvloop") else ("bare", "orbit")
    rows, best = [], {}
    for size in (1024, 8192):
        cells = []
        for kind in kinds:
            best[size, kind], lossy = best_rate(measure(kind, size, args.seconds, nowhere))
            cells.append(cell(size, best[size, kind], lossy))
            print(f"{size // 1024} KiB {kind:13s}: {cells[-1]}", flush=True)
        rows.append((f"{size // 1024} KiB", *cells, *(["uvloop not installed"] if len(kinds) == 2 else [])))
    report.table(("packets", "(a) bare asyncio", "(b) receiver + acquisition", "(c) the same on uvloop"), rows,
                 title=f"The highest rate with no loss, {args.seconds:g} s at each step")
    for size in (1024, 8192):
        report.figure(f"(b) receiver + acquisition, {size // 1024} KiB packets", best[size, "orbit"], "{:,}/s",
                      best[size, "bare"], "(a) bare asyncio", target=(">=", 0.7), on="ratio")
        if "orbit+uvloop" in kinds:
            report.figure(f"(c) the same on uvloop, {size // 1024} KiB packets", best[size, "orbit+uvloop"],
                          "{:,}/s", best[size, "bare"], "(a) bare asyncio")
    report.note("a rate is a step of the ladder (RATES in the script): a ratio is known to about one step")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
