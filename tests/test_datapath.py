"""The data path: a simulated CCD board streaming UDP packets, its reader (a receiver with an acquisition loop)
writing FITS files per run, under a real run controller; and the reader fed packets made by hand, out of order,
twice, lost, late and of another size."""

import json
import os
import signal
import socket

import numpy
import pytest
from astropy.io import fits

from clients.sim.ccdpackets import pack
from runcontrol.errors import Refused
from tests.helpers import free_port, wait_until

BOARD = ["python", "-m", "clients.sim.board", "--board", "1"]
READER = ["python", "-m", "clients.sim.lta", "--name", "lta", "--silence", "1"]


def programs(port, *board_flags, tries=5, restart="always", per_file=3, reader_flags=()):
    return {"board": {"cmd": [*BOARD, "--control", f"127.0.0.1:{port}", "--rate", "4000", "--seed", "7",
                              *map(str, board_flags)], "restart": "never"},
            "lta": {"cmd": [*READER, "--board", f"127.0.0.1:{port}", "--per-file", str(per_file), "--tries", str(tries),
                            *reader_flags],
                    "client": "lta", "run": True, "depends_on": ["board"], "max_restarts": 50, "restart": restart,
                    "backoff": {"initial": 0.1, "max": 0.5}}}


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


def test_images_from_a_lossy_garbling_board_are_written_as_fits_per_run(system, tmp_path):
    s = system(programs(free_port(), "--loss", "0.01", "--corrupt", "0.01"))
    s.wait_state("lta", "RUNNING", registered=True)
    run = run_for(s, 8)
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


def test_a_board_that_never_comes_back_ends_the_reader_and_the_supervisor_restarts_it(system, tmp_path):
    s = system(programs(free_port(), "--die-after", "400", tries=2))
    s.wait_state("lta", "RUNNING", registered=True)
    s.op.request("run", "prepare_run")
    s.op.request("run", "begin_run", params={"rows": 16, "cols": 512})
    exited = s.wait_event("event.program_exited", timeout_s=40, program="lta")
    assert exited["code"] == 3 and any("could not be brought back in 2 tries" in line for line in exited["tail"])
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
    first = s.program("lta")["pid"]
    os.kill(first, signal.SIGKILL)
    s.wait_state("lta", "RUNNING", registered=True, restarts=1)
    wait_until(lambda: (s.op.request("lta", "status")["run"] or {}).get("acquisitions", 0) >= 70, 30, 0.2)
    s.op.request("run", "end_run")
    folder = tmp_path / "data" / "lta" / f"run_{run:06d}"
    record = json.loads((folder / "run.json").read_text())
    images = images_of(folder)
    assert record["acquisitions"] == len(images) and record["bytes"] == sum(pixels.nbytes for _, pixels in images)
    assert record["files"] == len(list(folder.glob("file_*.fits")))
    assert s.op.request("run", "runs")[-1]["reports"]["lta"]["acquisitions"] == len(images)


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
    host, port = s.op.request("lta", "status")["udp"]
    assert host == "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        for packet in packets:
            out.sendto(packet, (host, port))

    def published():
        rates = (s.op.request(None, "_retained").get("lta.rates") or {}).get("data", {})
        return rates.get("processed", 0) >= len(packets) and rates
    return wait_until(published, 30, 0.2, what=f"the reader's rates after {len(packets)} packets")


def begin_hand_fed_run(s):
    s.wait_state("lta", "RUNNING", registered=True)
    s.op.request("run", "prepare_run")
    return s.op.request("run", "begin_run", params={"rows": 2, "cols": 1024})["run"]


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


def test_hand_fed_packets_of_495_samples_make_complete_images(system, tmp_path):
    s = system(programs(free_port(), *HAND_FED, reader_flags=QUIET_READER))
    run = begin_hand_fed_run(s)
    whole, one_lost, short_last = (board_packets(0, 3, 990, 495, 0), board_packets(1, 3, 990, 495, 6),
                                   board_packets(2, 2, 1000, 495, 12))   # 1 KiB packets; rows of 495, 495 and 10
    assert {len(packet) for packet in whole} == {1024}
    send_by_hand(s, [*whole, *one_lost[:2], *one_lost[3:], *reversed(short_last)])
    s.op.request("run", "end_run")   # the one with a packet lost is written at the end
    folder = tmp_path / "data" / "lta" / f"run_{run:06d}"
    images = images_of(folder)
    assert [(header["IMAGE"], header["MISSING"], pixels.shape) for header, pixels in images] == \
        [(0, 0, (3, 990)), (2, 0, (2, 1000)), (1, 1, (3, 990))]
    assert all((pixels[row] == pixels_of(header["IMAGE"], row, 0, pixels.shape[1])).all()
               for header, pixels in images[:2] for row in range(pixels.shape[0]))
    record = json.loads((folder / "run.json").read_text())
    assert record["acquisitions"] == 3 and counts(record) == (1, 0, 0)
