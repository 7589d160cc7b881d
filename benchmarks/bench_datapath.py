"""The data path: board packets into FITS images through damicm's reader, against a bare asyncio receiver that counts.

For packets of 1 KiB and 8 KiB, the benchmark sends 2 s worth of valid board
packets (`clients.sim.ccdpackets`) at each step of a ladder of rates, to:
(a) bare: an asyncio datagram protocol on asyncio's own loop that only counts
them, the reference; (b) orbit: damicm's reader (`clients.sim.lta.CcdReader`,
as it runs: on uvloop where installed), its UDP listener, assembler, FITS
writer, acquisition loop and counters, in a run; only the board's control link
is left out (a stub that holds). Images of 1024 rows: 1980 columns in packets
of 495 samples (1 KiB, 4 a row, 4,096 packets an image, 4 MB), or 4079 columns
in packets of 4079 samples (8 KiB, one a row, 1,024 packets, 8.4 MB). Both get
the same 16 MB kernel buffer. A step is lossless when every packet sent is
counted: by (a), or by (b) in the pixels of the FITS files it wrote (images
read back, less what their MISSING keys say). Reported: the highest lossless
rate (packets/s, MB/s), the loss at the next step up and where it happened, and
the receiver's CPU time per packet at its highest lossless step. Target: (b) at
least 70 % of (a) at both sizes.

Run: python benchmarks/bench_datapath.py [--seconds 2] [--sizes 1024,8192]
"""

import argparse
import asyncio
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy
import psutil

import common
from figures import Report

GEOMETRY = {1024: (1024, 1980, 495), 8192: (1024, 4079, 4079)}   # packet bytes -> rows, columns, samples a packet
RATES = {1024: [40000, 60000, 80000, 100000, 115000, 130000, 145000, 160000, 175000, 190000, 210000, 230000,
                250000, 275000, 300000],
         8192: [20000, 30000, 40000, 50000, 60000, 70000, 80000, 90000, 100000, 115000, 130000, 145000, 160000,
                180000, 200000]}
BURST = 16              # packets sent between two looks at the clock
SEQ_IMAGE = struct.Struct("<II")   # a packet's sequence and image numbers, bytes 6..13
# asyncio's datagram transport reads each datagram into a new 256 KiB buffer, cut down to its size: glibc serves it by
# mmap, or from the heap trimmed after each (14 us of kernel time a packet), until its sliding thresholds happen to
# move (1.5 us). Both receivers get them fixed where they end up once warm (32 MiB, glibc's highest), the reference
# its best case every time.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}
SETTLE_S = 10.0         # at most, for the receiver to empty its kernel buffer after the last packet
BEHIND = 0.97           # a sender that kept less than this of the asked rate: its own limit


# --- the receivers, each in a process of its own -------------------------------------------------------

def serve_bare(port):
    from clients.kit.datagrams import enlarge_receive_buffer

    class Count(asyncio.DatagramProtocol):
        packets = 0

        def datagram_received(self, data, addr):
            Count.packets += 1

    async def run():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", port))
        enlarge_receive_buffer(sock)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await asyncio.get_running_loop().create_datagram_endpoint(Count, sock=sock)
        print("ready", flush=True)
        await stop.wait()
    asyncio.run(run())
    print(json.dumps({"packets": Count.packets}), flush=True)


def serve_reader(port, folder, size, nowhere, beacon_port):
    from clients.kit.acquisition import Source
    from clients.sim.lta import CcdReader

    class Holds(Source):
        """A board that is always there: its stream is the benchmark's."""

        async def open(self):
            pass

        async def configure(self, settings):
            pass

        async def start(self):
            pass

        async def lost(self):
            await asyncio.Event().wait()

        async def stop(self):
            pass

    class Bench(CcdReader):
        async def main(self):
            rows, cols, _ = GEOMETRY[size]
            self.on_begin(types.SimpleNamespace(number=1, params={"rows": rows, "cols": cols}))
            print("ready", flush=True)
            return await super().main()

    # No server: the data path alone. Its bus address is a port of the benchmark's block where nothing listens.
    reader = Bench(f"bench-lta-{os.getpid()}", ("127.0.0.1", nowhere), ("127.0.0.1", port), Path(folder),
                   per_file=10, tries=5, silence_s=3600.0, window=1024, server=f"tcp://127.0.0.1:{nowhere}",
                   beacon_port=beacon_port)
    reader.acquisition.source = Holds()
    try:
        reader.serve()
    finally:
        reader.close()


# --- the sender: this process ------------------------------------------------------------------------------

def one_image(size):
    """The packets of one image, back to back in one buffer: board-like pixels (a baseline and noise)."""
    from clients.sim.ccdpackets import pack
    rows, cols, per = GEOMETRY[size]
    pixels = (1000 + numpy.random.default_rng(7).normal(0, 5, (rows, cols))).astype("<u2")
    packets = [pack(1, 0, 0, time.time(), row, col, rows, cols, 1, pixels[row, col:col + per])
               for row in range(rows) for col in range(0, cols, per)]
    assert {len(packet) for packet in packets} == {size}
    return bytearray(b"".join(packets)), len(packets)


def send(port, size, rate, seconds, image):
    """Whole images at `rate` packets a second for about `seconds` (each packet numbered, the sequence going on
    across images), in bursts of BURST; (packets sent, images sent, seconds it took). Gives up, counting what it
    sent, at 3 times the time it should take."""
    buffer, per_image = image
    view = memoryview(buffer)
    packets = [view[at:at + size] for at in range(0, len(buffer), size)]
    images = max(1, round(rate * seconds / per_image))
    patch = SEQ_IMAGE.pack_into
    seq = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        out.connect(("127.0.0.1", port))
        send_one = out.send
        start = time.perf_counter()
        give_up = start + 3 * seconds + 5
        for number in range(images):
            for first in range(0, per_image, BURST):
                for at in range(first, min(first + BURST, per_image)):
                    patch(buffer, at * size + 6, seq, number)
                    send_one(packets[at])
                    seq += 1
                now = time.perf_counter()
                ahead = start + seq / rate - now
                if ahead > 0:
                    time.sleep(ahead)
                elif now > give_up:
                    return seq, number, now - start
        return seq, images, time.perf_counter() - start


def queued_bytes(port):
    """What the kernel holds for the UDP socket bound to 127.0.0.1:`port` (bytes), from /proc/net/udp."""
    local = f"0100007F:{port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            return int(fields[4].split(":")[1], 16)
    return 0


def wait_ready(proc, timeout_s=30):
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


def accounted(folder, size):
    """(packets in the FITS images written, what the reader's run record says)."""
    from astropy.io import fits
    rows, cols, per = GEOMETRY[size]
    per_image = rows * -(-cols // per)
    packets = 0
    for path in sorted(folder.rglob("file_*.fits")):
        with fits.open(path) as hdus:
            packets += sum(per_image - hdu.header["MISSING"] for hdu in hdus[1:])
    records = list(folder.rglob("run.json"))
    return packets, (json.loads(records[0].read_text()) if records else {})


def step(kind, size, rate, seconds, image, nowhere):
    """One step of the ladder: a fresh receiver, the packets, its count; a dict of what happened."""
    port = common.free_port()
    folder = common.scratch(f"orbit-bench-data-{kind}-")
    argv = ["--serve-bare", str(port)] if kind == "bare" else \
        ["--serve-reader", str(port), str(folder), str(size), *nowhere]
    proc = subprocess.Popen([sys.executable, __file__, *argv], cwd=common.ROOT, start_new_session=True,
                            env={**os.environ, **MALLOC, "PYTHONPATH": str(common.ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        wait_ready(proc)
        cpu = psutil.Process(proc.pid)
        before = sum(cpu.cpu_times()[:2])
        sent, _, took = send(port, size, rate, seconds, image)
        deadline = time.monotonic() + SETTLE_S
        while queued_bytes(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)   # the last batch through the reader's hands
        cpu_s = sum(cpu.cpu_times()[:2]) - before
    finally:
        common.stop_group(proc, 60)
        output = proc.stdout.read()
        proc.stdout.close()
    if kind == "bare":
        got, record = json.loads(output.splitlines()[-1])["packets"], {}
    else:
        got, record = accounted(folder, size)
    for path in folder.rglob("*"):   # several GB over a ladder: not kept until the end
        if path.is_file():
            path.unlink()
    return {"rate": rate, "sent": sent, "got": got, "kept": sent / took, "cpu_us": 1e6 * cpu_s / max(got, 1),
            "record": record}


def climb(kind, size, seconds, nowhere):
    """The ladder from its foot until the first step that lost a packet, or the sender's own limit."""
    image = one_image(size)
    steps = []
    for rate in RATES[size]:
        steps.append(step(kind, size, rate, seconds, image, nowhere))
        last = steps[-1]
        print(f"  {size // 1024} KiB {kind:6s} {rate:>7,}/s: sent {last['sent']:,} at {last['kept']:,.0f}/s, "
              f"counted {last['got']:,}, {last['cpu_us']:.2f} us CPU a packet {where_lost(last)}", flush=True)
        if not lossless(last):
            break
    return steps


def lossless(result):
    """Every packet counted, the sender keeping the rate asked."""
    return result["got"] >= result["sent"] and result["kept"] >= BEHIND * result["rate"]


def where_lost(result):
    record = result["record"]
    if not record or result["got"] >= result["sent"]:
        return ""
    return "(" + ", ".join(f"{key} {record[key]:,}" for key in ("lost_packets", "late_packets", "duplicate_packets",
                                                                "kernel_dropped", "writer_waits")
                           if key in record) + ")"


def best(steps, size):
    """(the highest lossless rate, the text of the table's cell)."""
    clean = [s for s in steps if lossless(s)]
    rate = clean[-1]["rate"] if clean else 0
    text = f"{rate:,}/s ({rate * size / 1e6:.0f} MB/s)"
    last = steps[-1]
    if last["got"] < last["sent"]:
        text += f"; {100 * (1 - last['got'] / last['sent']):.2f} % lost at {last['rate']:,}"
        text += f" {where_lost(last)}" if last["record"] else ""
    elif last["kept"] < BEHIND * last["rate"]:
        text += f"; the sender's limit ({last['kept']:,.0f}/s asked {last['rate']:,})"
    else:
        text += ", the top of the ladder"
    return rate, text


def cpu_side_by_side(bare, ours):
    """(rate, bare's CPU us a packet, ours) at the highest rate both took whole, or None."""
    ours = {s["rate"]: s["cpu_us"] for s in ours if lossless(s)}
    both = [s for s in bare if lossless(s) and s["rate"] in ours]
    return (both[-1]["rate"], both[-1]["cpu_us"], ours[both[-1]["rate"]]) if both else None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--sizes", default="1024,8192")
    parser.add_argument("--serve-bare", nargs=1)
    parser.add_argument("--serve-reader", nargs=5)
    args = parser.parse_args()
    if args.serve_bare:
        return serve_bare(int(args.serve_bare[0]))
    if args.serve_reader:
        port, folder, size, nowhere, beacon = args.serve_reader
        return serve_reader(int(port), folder, int(size), int(nowhere), int(beacon))
    common.exit_on_sigterm()
    sizes = [int(size) for size in args.sizes.split(",")]
    report = Report("datapath", seconds=args.seconds, sizes=sizes)
    nowhere = [str(common.free_port()), str(common.free_port())]   # the reader's bus address and beacon port: unused
    rows, found, cpu, capped = [], {}, {}, []
    for size in sizes:
        steps = {kind: climb(kind, size, args.seconds, nowhere) for kind in ("bare", "orbit")}
        found.update({(size, kind): best(steps[kind], size) for kind in steps})
        if steps["bare"][-1]["got"] >= steps["bare"][-1]["sent"]:   # the ladder ended on the sender, not on (a)
            capped.append(f"{size // 1024} KiB")
        cpu[size] = cpu_side_by_side(steps["bare"], steps["orbit"])
        rows.append((f"{size // 1024} KiB", found[size, "bare"][1], found[size, "orbit"][1],
                     "-" if cpu[size] is None else "{1:.1f} us / {2:.1f} us at {0:,}/s".format(*cpu[size])))
    report.table(("packets", "(a) bare asyncio, counting", "(b) damicm's reader: FITS images",
                  "CPU time a packet, (a) / (b)"), rows,
                 title=f"The highest rate with every packet counted, {args.seconds:g} s at each step")
    for size in sizes:
        report.figure(f"(b) damicm's reader, {size // 1024} KiB packets", found[size, "orbit"][0], "{:,}/s",
                      found[size, "bare"][0], "(a) bare asyncio", target=(">=", 0.7), on="ratio")
        if cpu[size] is not None:
            report.figure(f"(b)'s CPU time a packet, {size // 1024} KiB, at the highest rate both took whole",
                          cpu[size][2], "{:.1f} us", cpu[size][1], "(a) bare asyncio")
    report.note("a rate is a step of the ladder (RATES in the script): a ratio is known to about one step")
    if capped:
        report.note(f"{', '.join(capped)}: (a) lost nothing up to the rate the sender kept; its ratio is to that rate, "
                    "not to what (a) could take")
    report.note("CPU time: the receiver's process (its threads, user and system) over the packets it counted; the "
                "kernel's delivery over loopback counts to the sender")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
