"""The acquisition loop's packet side alone, in this process: packets fed one at a time, their items written by the
writer's thread into files of `per_file` items, invalid data counted and kept, every item written when the run ends."""

import json

from clients.kit.acquisition import Acquisition, BadData, Source, Writer


class Lines(Writer):
    """Items as lines of text."""

    suffix = ".txt"

    def open(self, path, run):
        self.out = open(path, "a", encoding="utf-8")

    def write(self, item):
        self.out.write(item + "\n")
        return len(item) + 1

    def close(self):
        self.out.close()


def parse(data):
    if not data.startswith(b"item "):
        raise BadData(f"{data[:8]!r} is no item")
    return [data.decode()]


def test_fed_packets_are_written_in_files_of_per_file_items_and_invalid_ones_counted_and_kept(tmp_path):
    acquisition = Acquisition(Source(), Lines(), parse, tmp_path, per_file=3, write_queue=1)
    acquisition.begin(1, {})
    for n in range(7):
        acquisition.feed(b"item %d" % n)
    acquisition.feed(b"garbage!")
    record = acquisition.end()
    folder = tmp_path / "run_000001"
    assert [path.read_text().split("\n")[:-1] for path in sorted(folder.glob("file_*.txt"))] == \
        [["item 0", "item 1", "item 2"], ["item 3", "item 4", "item 5"], ["item 6"]]
    assert (record["files"], record["acquisitions"], record["resyncs"], record["unwritten"]) == (3, 7, 1, 0)
    assert json.loads((folder / "run.json").read_text())["acquisitions"] == 7
    assert (folder / "bad.bin").read_bytes() == (8).to_bytes(4, "little") + b"garbage!"
