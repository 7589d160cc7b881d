"""The data path: a simulated CCD board streaming UDP packets, its reader (a receiver with an acquisition loop)
writing FITS files per run, under a real run controller; the reader fed packets made by hand, out of order,
twice, lost, late, of another size and outside a run, and in bursts it takes in full batches (a writer slower than
they come, more than its socket's buffer holds); and a receiver of our own publishing under CURVE."""

import calendar
import hashlib
import importlib.util
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy
import pytest
import zmq
from astropy.io import fits

from clients.sim.ccdpackets import pack
from runcontrol.errors import Refused
from tests.helpers import ROOT, env_for_children, free_port, stop_process, wait_until

BOARD = ["python", "-m", "clients.sim.board", "--board", "1"]
READER = ["python", "-m", "clients.sim.lta", "--name", "lta", "--silence", "1"]


def programs(port, *board_flags, tries=5, restart="always", per_file=3, reader_flags=(), reader_env=None):
    return {"board": {"cmd": [*BOARD, "--control", f"127.0.0.1:{port}", "--rate", "4000", "--seed", "7",
                              *map(str, board_flags)], "restart": "never"},
            "lta": {"cmd": [*READER, "--board", f"127.0.0.1:{port}", "--per-file", str(per_file), "--tries", str(tries),
                            *reader_flags],
                    "client": "lta", "participant": True, "depends_on": ["board"], "max_restarts": 50, "restart": restart,
                    "backoff": {"initial": 0.1, "max": 0.5}, "env": reader_env or {}}}


def run_for(s, seconds_of_images, **params):
    s.op.request("run", "prepare_run")
    run = s.op.request("run", "begin_run", params={"rows": 16, "cols": 512, **params})["run"]
    s.wait_event("event.run_state", timeout_s=30, message=f"Beginning run {run}")
    wait_until(lambda: s.op.request("lta", "status")["run"]["acquisitions"] >= seconds_of_images, 30, 0.2)
    ended = s.op.request("run", "end_run")
    assert ended["state"] == "STOP"
    return run


def images_of(folder):
    found = []
    for path in sorted(folder.glob("file_*.fits")):
        with fits.open(path) as hdus:
            found += [(hdu.header, hdu.data.copy()) for hdu in hdus[1:]]
    return found


def utc_seconds(stamp):
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))


def test_images_from_a_lossy_garbling_board_are_written_as_fits_per_run(system, tmp_path):
    # a reader in a time zone 5:30 ahead of UTC: DATE-OBS is UTC all the same
    s = system(programs(free_port(), "--loss", "0.01", "--corrupt", "0.01", reader_env={"TZ": "IST-5:30"}))
    s.wait_state("lta", "RUNNING", registered=True)
    run = run_for(s, 8, seconds=0.02)
    folder = tmp_path / "data" / "lta" / f"run_{run:06d}"
    record = json.loads((folder / "run.json").read_text())
    images = images_of(folder)
    assert len(images) == record["acquisitions"] >= 8 and record["files"] == -(-len(images) // 3)
    assert record["resyncs"] > 0 and (folder / "bad.bin").stat().st_size > 0  # garbled ones skipped and kept
    header, pixels = images[0]
    assert (header["RUN"], header["BOARD"], pixels.shape) == (run, 1, (16, 512))
    assert sum(h["MISSING"] for h, _ in images) > 0  # lost packets counted, the images marked
    assert 900 < pixels[pixels > 0].mean() < 1100
    runs = s.op.request("run", "runs")
    assert runs[-1]["reports"]["lta"]["acquisitions"] == record["acquisitions"]  # the run's record says it
    by_number = sorted((header for header, _ in images), key=lambda header: header["IMAGE"])
    assert [header["IMAGE"] for header in by_number] == list(range(len(images)))  # the stream's images, each once
    assert {header["EXPTIME"] for header in by_number} == {0.02}  # the run's exposure
    taken = [utc_seconds(header["DATE-OBS"]) for header in by_number]
    assert int(runs[-1]["start"]) <= taken[0] and taken == sorted(taken) and taken[-1] <= runs[-1]["end"]


def test_the_readers_settings_configure_the_board_and_are_frozen_during_a_run(system, tmp_path):
    s = system(programs(free_port()))
    s.wait_state("lta", "RUNNING", registered=True)
    wait_until(lambda: s.op.request("run", "config", program="lta")["values"], 20, 0.1, what="the reader's settings")
    changed = s.op.request("run", "set_config", program="lta", values={"rows": 8, "cols": 128, "samples": 2})
    assert changed["changes"]["samples"] == [1, 2]
    s.op.request("run", "prepare_run")
    run = s.op.request("run", "begin_run")["run"]   # no parameters: the settings decide
    with pytest.raises(Refused) as refused:
        s.op.request("run", "set_config", program="lta", values={"samples": 4})
    assert refused.value.code == "bad_state"
    wait_until(lambda: s.op.request("lta", "status")["run"]["acquisitions"] >= 2, 30, 0.2)
    s.op.request("run", "end_run")
    header, pixels = images_of(tmp_path / "data" / "lta" / f"run_{run:06d}")[0]
    assert (header["NSAMP"], pixels.shape) == (2, (8, 128))
    assert s.op.request("run", "run_config", run=run)["lta"] == {"rows": 8, "cols": 128, "samples": 2, "seconds": 0}
    with pytest.raises(Refused, match="more than the board reads"):
        s.op.request("run", "set_config", program="lta", values={"rows": 8192, "cols": 4096, "samples": 1})
    with pytest.raises(Refused, match="is greater than the maximum"):
        s.op.request("run", "set_config", program="lta", values={"rows": 9000})


def test_a_dropped_link_is_reconnected_and_the_run_goes_on(system, tmp_path):
    s = system(programs(free_port(), "--drop-every", "300", "--drop-for", "0.5"))
    s.wait_state("lta", "RUNNING", registered=True)
    run = run_for(s, 12)
    record = json.loads((tmp_path / "data" / "lta" / f"run_{run:06d}" / "run.json").read_text())
    assert record["reconnects"] >= 1 and record["acquisitions"] >= 12
    # the board numbers its images from 0 again after each drop: none of them is taken for an image written before
    assert (record["duplicate_packets"], record["late_packets"]) == (0, 0)
    assert s.program("lta")["restarts"] == 0


def test_a_board_that_never_comes_back_is_tried_ever_later_then_the_supervisor_restarts_the_reader(system, tmp_path):
    s = system(programs(free_port(), "--die-after", "400", tries=3))
    s.wait_state("lta", "RUNNING", registered=True)
    s.op.request("run", "prepare_run")
    s.op.request("run", "begin_run", params={"rows": 16, "cols": 512})
    log, udp = tmp_path / "log" / "lta.log", tuple(s.op.request("lta", "status")["udp"])
    wait_until(lambda: "(try 1 of 3)" in log.read_text(), 30, 0.05, what="the reader to lose its board")
    stray = (pack(2, 10000 + row, 0, time.time(), row, 0, 4096, 256, 1, pixels_of(0, row, 0, 256))
             for row in itertools.count())   # rows of an image too tall to be whole (and written) meanwhile

    def gave_up():   # packets from elsewhere meanwhile do not bring the board back: the tries go on counting
        out.sendto(next(stray), udp)
        s.op.poll(0.05)
        return s.events.find("event.program_exited", program="lta")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        exited = wait_until(gave_up, 40, 0, what="the reader to give up")   # a packet each 0.05 s at most
    assert exited["code"] == 3 and any("could not be brought back in 3 tries" in line for line in exited["tail"])
    first_life = log.read_text().split("could not be brought back", 1)[0].splitlines()   # the whole log: the tail
    tries = [re.search(r"reconnecting in ([0-9.]+) s \(try (\d) of 3\)", line) for line in first_life]
    tries = [(float(found[1]), int(found[2])) for found in tries if found]
    assert [number for _, number in tries] == [1, 2, 3]
    delays = [delay for delay, _ in tries]
    assert delays[1] >= 1.5 * delays[0] and delays[2] >= 1.5 * delays[1]  # each try farther from the last
    wait_until(lambda: s.program("lta")["restarts"] >= 1, 30, 0.2)


@pytest.mark.parametrize("how", ["stop", "SIGTERM", "SIGINT"])
def test_every_file_is_complete_however_the_reader_is_stopped_mid_run(system, tmp_path, how):
    # on-failure: a reader that ended cleanly on its signal is not started again (it would rejoin the run and write on)
    s = system(programs(free_port(), restart="on-failure"))
    s.wait_state("lta", "RUNNING", registered=True)
    s.op.request("run", "prepare_run")
    run = s.op.request("run", "begin_run", params={"rows": 16, "cols": 512})["run"]
    wait_until(lambda: s.op.request("lta", "status")["run"]["acquisitions"] >= 4, 30, 0.2)
    if how == "stop":
        s.op.request("run", "stop", program="lta", timeout=20)
    else:
        pid = s.program("lta")["pid"]
        os.kill(pid, getattr(signal, how))
        s.wait_event("event.program_exited", program="lta", pid=pid)
    folder = tmp_path / "data" / "lta" / f"run_{run:06d}"
    record = json.loads((folder / "run.json").read_text())
    assert len(images_of(folder)) == record["acquisitions"] >= 4  # astropy reads every file, every image


def test_a_reader_killed_mid_run_comes_back_into_the_run_and_counts_every_image_in_its_files(system, tmp_path):
    s = system(programs(free_port(), per_file=50))   # the kill comes while a file is open with images in it
    s.wait_state("lta", "RUNNING", registered=True)
    s.op.request("run", "prepare_run")
    run = s.op.request("run", "begin_run", params={"rows": 16, "cols": 512})["run"]
    wait_until(lambda: s.op.request("lta", "status")["run"]["acquisitions"] >= 4, 30, 0.2)
    folder = tmp_path / "data" / "lta" / f"run_{run:06d}"
    first = s.program("lta")["pid"]
    os.kill(first, signal.SIGSTOP)   # frozen, so that what it left is known before it dies
    left = digests(folder)
    os.kill(first, signal.SIGKILL)
    assert left
    s.wait_state("lta", "RUNNING", registered=True, restarts=1)
    wait_until(lambda: (s.op.request("lta", "status")["run"] or {}).get("acquisitions", 0) >= 70, 30, 0.2)
    s.op.request("run", "end_run")
    now = digests(folder)
    assert {name: now.get(name) for name in left} == left  # what the first reader wrote is left as it was
    assert sorted(now) == [f"file_{n:04d}.fits" for n in range(1, len(now) + 1)] and len(now) > len(left)
    record = json.loads((folder / "run.json").read_text())
    images = images_of(folder)
    assert record["acquisitions"] == len(images) and record["bytes"] == sum(pixels.nbytes for _, pixels in images)
    assert record["files"] == len(list(folder.glob("file_*.fits")))
    assert s.op.request("run", "runs")[-1]["reports"]["lta"]["acquisitions"] == len(images)


def digests(folder):
    """file name -> sha256 of its bytes, for each FITS file of a run's folder."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.glob("file_*.fits")}


PROBE = """
import asyncio, sys
from clients.kit.receiver import Receiver


class Probe(Receiver):
    async def handle_packet(self, data, source):
        self.publish_data(b"data", data)

    def cmd_where(self, msg):
        return {"udp": self.addresses[0][:2], "outbound": self.outbound,
                "loop": type(asyncio.get_running_loop()).__module__}


probe = Probe("probe", server=sys.argv[1])
probe.listen_udp("127.0.0.1", 0)
probe.outbound = probe.add_output("outbound", "tcp://127.0.0.1:0", curve=sys.argv[2].encode())
try:
    sys.exit(probe.serve())
finally:
    probe.close()
"""


@pytest.fixture
def probe(server, make_client, tmp_path):
    """A receiver run as its own program, with an outbound output under CURVE: (an operator client, where the
    receiver listens and publishes and on which loop it runs, the output's public key)."""
    public, secret = zmq.curve_keypair()
    with open(tmp_path / "probe.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-c", PROBE, server.router, secret.decode()], cwd=ROOT,
                                env=env_for_children(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        op = make_client("op")
        wait_until(lambda: "probe" in [c["name"] for c in op.request(None, "_list")], 20, 0.1, what="the receiver")
        yield op, op.request("probe", "where"), public
    finally:
        stop_process(proc)


def test_a_receiver_runs_on_uvloop_where_it_is_installed_else_on_asyncios_own_loop(probe):
    _, where, _ = probe
    assert where["loop"].split(".")[0] == ("uvloop" if importlib.util.find_spec("uvloop") else "asyncio")


def test_an_outbound_output_publishes_only_to_subscribers_with_its_curve_key(probe):
    _, where, public = probe
    ctx = zmq.Context.instance()
    subscribers = {kind: ctx.socket(zmq.SUB) for kind in ("keyed", "plain", "wrong key")}
    for kind, server_key in (("keyed", public), ("wrong key", zmq.curve_keypair()[0])):
        mine = zmq.curve_keypair()
        subscribers[kind].curve_serverkey, subscribers[kind].curve_publickey = server_key, mine[0]
        subscribers[kind].curve_secretkey = mine[1]
    try:
        for sub in subscribers.values():
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(where["outbound"])
        keyed = subscribers["keyed"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            for n in range(3):   # each packet, once the last came through: at most one every 0.1 s, for 20 s
                wait_until(lambda: out.sendto(b"packet %d" % n, tuple(where["udp"])) and keyed.poll(100), 20, 0)
                assert keyed.recv_multipart()[0] == b"data"
        assert not subscribers["plain"].poll(0) and not subscribers["wrong key"].poll(0)
    finally:
        for sub in subscribers.values():
            sub.close()


HAND_FED = ("--loss", "1")   # a board that sends nothing: the test sends the packets
QUIET_READER = ("--silence", "600")   # no data for a while is no lost link here


def board_packets(image, rows, cols, size, first_seq):
    """The packets of one image as a board sends them, numbered from `first_seq`; a pixel's value tells where it is."""
    packets, seq = [], first_seq
    for row in range(rows):
        for col in range(0, cols, size):
            count = min(size, cols - col)
            packets.append(pack(1, seq, image, 1.7e9, row, col, rows, cols, 1, pixels_of(image, row, col, count)))
            seq += 1
    return packets


def pixels_of(image, row, col, count):
    return ((1000 * image + row + numpy.arange(col, col + count)) % 65536).astype("<u2")


def send_by_hand(s, packets):
    """`packets` to the reader's UDP port in this order, from one socket (loopback keeps the order); wait until the
    reader took them all and published its rates after them (returned)."""
    status = s.op.request("lta", "status")
    host, port = status["udp"]
    assert host == "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        for packet in packets:
            out.sendto(packet, (host, port))

    def published():
        rates = (s.op.request(None, "_retained").get("lta.rates") or {}).get("data", {})
        return rates.get("processed", 0) >= status["receiver"]["processed"] + len(packets) and rates
    return wait_until(published, 30, 0.2, what=f"the reader's rates after {len(packets)} packets")


def begin_hand_fed_run(s, in_ready=()):
    """Prepare a run, send the packets `in_ready` (READY: not a run yet), begin it; its number."""
    s.wait_state("lta", "RUNNING", registered=True)
    s.op.request("run", "prepare_run")
    if in_ready:
        send_by_hand(s, in_ready)
    return s.op.request("run", "begin_run", params={"rows": 2, "cols": 1024})["run"]


def files_under(folder):
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def counts(record):
    return record["lost_packets"], record["duplicate_packets"], record["late_packets"]


def test_hand_fed_packets_reordered_twice_and_late_make_each_image_once_with_what_it_misses(system, tmp_path):
    s = system(programs(free_port(), *HAND_FED, reader_flags=(*QUIET_READER, "--window", "16")))
    run = begin_hand_fed_run(s)
    sent = [packet for n in range(10) for packet in board_packets(n, 2, 1024, 256, 8 * n)]  # image n: 8n..8n+7
    order = [*range(8),                                          # image 0 in order
             *range(8, 14), 15, 14,                              # image 1: its last two swapped
             *range(16, 22), 24, 22, 25, 23, *range(26, 32),     # images 2 and 3 interleaved at the boundary
             32, 33, 34, 34, *range(36, 40),                     # image 4: a duplicate where 35 is lost
             *range(40, 50), 45, *range(51, 56), 50,             # 5 once more once whole; 50 late, within the window
             56, 57, *range(59, 80), 58]                         # 58 later than the window: lost, then late
    rates = send_by_hand(s, [sent[seq] for seq in order])
    s.op.request("run", "end_run")
    folder = tmp_path / "data" / "lta" / f"run_{run:06d}"
    images = images_of(folder)
    assert sorted((header["IMAGE"], header["MISSING"]) for header, _ in images) == \
        [(0, 0), (1, 0), (2, 0), (3, 0), (4, 1), (5, 0), (6, 0), (7, 1), (8, 0), (9, 0)]
    whole = {header["IMAGE"]: pixels for header, pixels in images}
    assert all((whole[n][row] == pixels_of(n, row, 0, 1024)).all() for n in (1, 2, 3, 6) for row in (0, 1))
    record = json.loads((folder / "run.json").read_text())
    assert record["acquisitions"] == 10 and counts(record) == (2, 2, 1) == counts(rates)
    assert counts(s.op.request("run", "runs")[-1]["reports"]["lta"]) == (2, 2, 1)


def test_hand_fed_packets_of_495_samples_make_complete_images_and_none_outside_the_run_is_written(system, tmp_path):
    s = system(programs(free_port(), *HAND_FED, reader_flags=QUIET_READER))
    run = begin_hand_fed_run(s, in_ready=board_packets(7, 3, 990, 495, 100))
    whole, one_lost, short_last = (board_packets(0, 3, 990, 495, 0), board_packets(1, 3, 990, 495, 6),
                                   board_packets(2, 2, 1000, 495, 12))   # 1 KiB packets; rows of 495, 495 and 10
    assert {len(packet) for packet in whole} == {1024}
    send_by_hand(s, [*whole, *one_lost[:2], *one_lost[3:], *reversed(short_last)])
    s.op.request("run", "end_run")   # the one with a packet lost is written at the end
    data = tmp_path / "data" / "lta"
    written = files_under(data)
    send_by_hand(s, board_packets(8, 3, 990, 495, 106))   # in STOP
    assert files_under(data) == written
    folder = data / f"run_{run:06d}"
    images = images_of(folder)
    assert [(header["IMAGE"], header["MISSING"], pixels.shape) for header, pixels in images] == \
        [(0, 0, (3, 990)), (2, 0, (2, 1000)), (1, 1, (3, 990))]   # nor 7 (sent in READY) nor 8
    assert all((pixels[row] == pixels_of(header["IMAGE"], row, 0, pixels.shape[1])).all()
               for header, pixels in images[:2] for row in range(pixels.shape[0]))
    record = json.loads((folder / "run.json").read_text())
    assert record["acquisitions"] == 3 and counts(record) == (1, 0, 0)



def burst_while_frozen(s, packets, then=()):
    """`packets` sent while the reader is frozen (SIGSTOP): they wait in its socket's kernel buffer, or are dropped
    there when it is full, and the reader, going on, takes them in full batches; `then` sent once it took all it
    got. The reader's status (and its status before) once every packet sent is taken or counted dropped."""
    before = s.op.request("lta", "status")
    udp, pid = tuple(before["udp"]), s.program("lta")["pid"]

    def accounted(count):   # every packet sent taken, or dropped by the kernel (and counted)
        def check():
            status = s.op.request("lta", "status")
            receiver = status["receiver"]
            return receiver["processed"] + receiver["kernel_dropped"] >= before["receiver"]["processed"] + count \
                and status
        return check
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        os.kill(pid, signal.SIGSTOP)
        try:
            for packet in packets:
                out.sendto(packet, udp)
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(accounted(len(packets)), 30, 0.1, what=f"the reader to take {len(packets)} packets")
        for packet in then:
            out.sendto(packet, udp)
    return wait_until(accounted(len(packets) + len(then)), 30, 0.1, what="the reader to take the last ones"), before


def test_a_burst_out_of_order_taken_in_batches_makes_every_image_whole_with_its_pixels(system, tmp_path):
    s = system(programs(free_port(), *HAND_FED, reader_flags=QUIET_READER))
    run = begin_hand_fed_run(s)
    sent = []
    for n in range(48):   # 64 packets an image: rows of 1024 samples in 4 packets, or of 1000 (the last one short)
        sent += board_packets(n, 16, 1000 if n % 2 else 1024, 256, len(sent))
    order = list(range(len(sent)))
    for at in range(0, len(order) - 8, 97):   # here and there a few reversed, a few across two images
        order[at:at + 8] = reversed(order[at:at + 8])
    burst = [sent[at] for at in order]
    burst.insert(1500, b"x" * 9000)   # longer than any packet: cut to the longest, counted, kept
    status, _ = burst_while_frozen(s, burst)
    assert status["receiver"]["kernel_dropped"] == 0
    s.op.request("run", "end_run")
    folder = tmp_path / "data" / "lta" / f"run_{run:06d}"
    images = images_of(folder)
    assert sorted((header["IMAGE"], header["MISSING"]) for header, _ in images) == [(n, 0) for n in range(48)]
    assert all((pixels[row] == pixels_of(header["IMAGE"], row, 0, pixels.shape[1])).all()
               for header, pixels in images for row in range(16))
    record = json.loads((folder / "run.json").read_text())
    assert record["acquisitions"] == 48 and counts(record) == (0, 0, 0) and record["kernel_dropped"] == 0
    assert record["resyncs"] == 1 and (folder / "bad.bin").stat().st_size == 4 + 8226
    assert "9000 bytes: longer than any packet (8226)" in (tmp_path / "log" / "lta.log").read_text()


def test_a_writer_slower_than_the_packets_holds_the_reader_counted_and_writes_every_image(system, tmp_path):
    s = system(programs(free_port(), *HAND_FED, per_file=50, reader_flags=(*QUIET_READER, "--write-queue", "1")))
    run = begin_hand_fed_run(s)
    status, _ = burst_while_frozen(s, [packet for n in range(200) for packet in board_packets(n, 2, 1024, 256, 8 * n)])
    assert status["run"]["writer_waits"] > 0   # 200 images at once, one waiting for the writer at most
    s.op.request("run", "end_run")
    folder = tmp_path / "data" / "lta" / f"run_{run:06d}"
    record = json.loads((folder / "run.json").read_text())
    images = images_of(folder)
    assert sorted(header["IMAGE"] for header, _ in images) == list(range(200)) and record["acquisitions"] == 200
    assert record["writer_waits"] >= status["run"]["writer_waits"] and record["unwritten"] == 0
    assert {header["MISSING"] for header, _ in images} == {0} and counts(record) == (0, 0, 0)


def test_packets_the_kernel_had_no_room_for_are_counted_in_status_rates_and_the_record(system, tmp_path):
    s = system(programs(free_port(), *HAND_FED, reader_flags=QUIET_READER))
    run = begin_hand_fed_run(s)
    sent = [packet for n in range(1000) for packet in board_packets(n, 4, 4096, 4096, 4 * n)]   # 33 MB of 8 KiB
    status, before = burst_while_frozen(s, sent[:-4], then=sent[-4:])   # the last image after: the gap shows
    receiver = status["receiver"]
    dropped = receiver["kernel_dropped"] - before["receiver"]["kernel_dropped"]
    assert dropped > 0 and receiver["packets"] - before["receiver"]["packets"] + dropped == len(sent)
    wait_until(lambda: (s.op.request(None, "_retained").get("lta.rates") or {}).get("data", {}).get(
        "kernel_dropped") == receiver["kernel_dropped"], 30, 0.2, what="the kernel's drops in the reader's rates")
    assert status["run"]["kernel_dropped"] == dropped
    s.op.request("run", "end_run")
    record = json.loads((tmp_path / "data" / "lta" / f"run_{run:06d}" / "run.json").read_text())
    assert record["kernel_dropped"] == dropped == record["lost_packets"]   # each counted where it was lost, once
