"""The data path: a simulated CCD board streaming UDP packets, its reader (a receiver with an acquisition loop)
writing FITS files per run, under a real run controller."""

import json
import os
import signal

import pytest
from astropy.io import fits

from runcontrol.errors import Refused
from tests.helpers import free_port, wait_until

BOARD = ["python", "-m", "clients.sim.board", "--board", "1"]
READER = ["python", "-m", "clients.sim.lta", "--name", "lta", "--silence", "1"]


def programs(port, *board_flags, tries=5, restart="always"):
    return {"board": {"cmd": [*BOARD, "--control", f"127.0.0.1:{port}", "--rate", "4000", "--seed", "7",
                              *map(str, board_flags)], "restart": "never"},
            "lta": {"cmd": [*READER, "--board", f"127.0.0.1:{port}", "--per-file", "3", "--tries", str(tries)],
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


def test_a_reader_killed_mid_run_comes_back_into_the_run_and_adds_files_after_its_own(system, tmp_path):
    s = system(programs(free_port()))
    s.wait_state("lta", "RUNNING", registered=True)
    s.op.request("run", "prepare_run")
    run = s.op.request("run", "begin_run", params={"rows": 16, "cols": 512})["run"]
    wait_until(lambda: s.op.request("lta", "status")["run"]["acquisitions"] >= 4, 30, 0.2)
    first = s.program("lta")["pid"]
    os.kill(first, signal.SIGKILL)
    s.wait_state("lta", "RUNNING", registered=True, restarts=1)
    wait_until(lambda: (s.op.request("lta", "status")["run"] or {}).get("acquisitions", 0) >= 10, 30, 0.2)
    s.op.request("run", "end_run")
    folder = tmp_path / "data" / "lta" / f"run_{run:06d}"
    record = json.loads((folder / "run.json").read_text())
    images = images_of(folder)
    assert record["acquisitions"] <= len(images)  # the killed one's last images were on disk, not yet counted
    assert record["files"] == len(list(folder.glob("file_*.fits")))
