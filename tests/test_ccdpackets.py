"""The assembler core of the CCD readers, alone: packets in any order, twice, lost, late, of any size, into images."""

import numpy
import pytest

from clients.sim.ccdpackets import SEQ_SPAN, Assembler, BadPacket, fault, pack


def stream(images=3, rows=2, cols=1024, size=256, first_seq=0):
    """The packets a board sends for `images` images, in sequence order; pixel values tell image, row and column."""
    packets, seq = [], first_seq
    for image in range(images):
        for row in range(rows):
            for col in range(0, cols, size):
                count = min(size, cols - col)
                pixels = (1000 * image + row + numpy.arange(col, col + count)) % 65536
                packets.append(pack(1, seq, image, 1.7e9 + image, row, col, rows, cols, 1, pixels.astype("<u2")))
                seq += 1
    return packets


def assemble(packets, window=1024):
    """Feed `packets`, then flush; (the images in the order they were let go, the assembler)."""
    assembler = Assembler(window)
    images = [image for packet in packets for image in assembler.add(packet)]
    return images + assembler.flush(), assembler


def expected_pixels(number, rows, cols):
    return ((1000 * number + numpy.arange(rows)[:, None] + numpy.arange(cols)[None, :]) % 65536).astype("<u2")


def reorder(order, images=3):
    packets = stream(images)
    return [packets[at] for at in order]


IN_ORDER = list(range(24))   # three images of two rows of four packets: image n is packets 8n..8n+7
SCENARIOS = {
    "in order": (IN_ORDER, 1024, [(0, 0), (1, 0), (2, 0)], (0, 0, 0)),
    "last two of an image swapped": ([*range(6), 7, 6, *range(8, 24)], 1024, [(0, 0), (1, 0), (2, 0)], (0, 0, 0)),
    "two images interleaved at the boundary": ([*range(6), 8, 6, 9, 7, *range(10, 24)], 1024,
                                               [(0, 0), (1, 0), (2, 0)], (0, 0, 0)),
    "a duplicate where one is lost": ([0, 1, 2, 2, *range(4, 24)], 1024, [(1, 0), (2, 0), (0, 1)], (1, 1, 0)),
    "a duplicate after its image was written": ([*range(24), 5], 1024, [(0, 0), (1, 0), (2, 0)], (0, 1, 0)),
    "a packet late within the window": ([0, 1, 2, *range(4, 17), 3, *range(17, 24)], 16,
                                        [(1, 0), (0, 0), (2, 0)], (0, 0, 0)),
    "a packet later than the window": ([0, 1, 2, *range(4, 13), 3, *range(13, 24)], 4,
                                       [(0, 1), (1, 0), (2, 0)], (1, 0, 1)),
    "an image lost at its end, let go by the window": ([*range(6), *range(8, 24)], 4,
                                                       [(0, 2), (1, 0), (2, 0)], (2, 0, 0)),
}


@pytest.mark.parametrize("order, window, written, counts", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_assembler_packets_out_of_order_or_twice_each_image_once_with_what_it_misses(order, window, written, counts):
    images, assembler = assemble(reorder(order), window)
    assert [(image.number, image.missing) for image in images] == written
    assert (assembler.lost, assembler.duplicates, assembler.late) == counts
    for image in images:
        if image.missing == 0:
            assert (image.pixels == expected_pixels(image.number, 2, 1024)).all()


def test_assembler_a_duplicate_keeps_the_first_samples_and_the_image_its_missing_count():
    packets = stream(1)
    twin = bytearray(packets[2])
    twin[-2:] = b"\xff\xff"   # a duplicate that differs: the first one stays
    images, assembler = assemble([*packets[:3], bytes(twin), *packets[4:]])
    assert [(image.number, image.missing, image.received, image.expected) for image in images] == [(0, 1, 7, 8)]
    assert images[0].pixels[0, 767] == expected_pixels(0, 2, 1024)[0, 767]
    assert (assembler.lost, assembler.duplicates) == (1, 1)


@pytest.mark.parametrize("cols", [990, 1000])
def test_assembler_packets_of_495_samples_make_complete_images_however_they_come(cols):
    packets = stream(2, rows=3, cols=cols, size=495)
    assert len(packets[0]) == 1024
    images, assembler = assemble([*reversed(packets[:len(packets) // 2]), *packets[len(packets) // 2:]])
    assert [(image.number, image.missing, image.expected) for image in images] == [(0, 0, 3 * -(-cols // 495)),
                                                                                  (1, 0, 3 * -(-cols // 495))]
    assert all((image.pixels == expected_pixels(image.number, 3, cols)).all() for image in images)
    assert (assembler.lost, assembler.duplicates, assembler.late) == (0, 0, 0)


def test_assembler_one_of_495_sample_packets_lost_misses_one():
    packets = stream(1, rows=3, cols=990, size=495)
    images, assembler = assemble(packets[:4] + packets[5:])
    assert [(image.missing, image.expected) for image in images] == [(1, 6)]
    assert assembler.lost == 1


def test_assembler_sequence_numbers_wrapping_around_lose_nothing():
    images, assembler = assemble([stream(2, first_seq=SEQ_SPAN - 5)[at] for at in [*range(4), 5, 4, *range(6, 16)]])
    assert [(image.number, image.missing) for image in images] == [(0, 0), (1, 0)]
    assert (assembler.lost, assembler.duplicates, assembler.late) == (0, 0, 0)


def test_assembler_flush_counts_the_gaps_lost_and_the_next_packet_begins_a_new_stream():
    assembler = Assembler(1024)
    packets = stream(2)
    for packet in packets[:3] + packets[5:10]:
        assembler.add(packet)
    let_go = assembler.flush()
    assert [(image.number, image.missing) for image in let_go] == [(0, 2), (1, 6)] and assembler.lost == 2
    again = [image for packet in packets[:8] for image in assembler.add(packet)]   # the board began again
    assert [(image.number, image.missing) for image in again] == [(0, 0)]
    assert (assembler.lost, assembler.duplicates) == (2, 0)


def test_assembler_counts_go_on_from_those_given():
    assembler = Assembler(counts={"lost_packets": 3, "duplicate_packets": 2, "late_packets": 1})
    for packet in [*stream(1), stream(1)[0]]:
        assembler.add(packet)
    assert assembler.counts() == {"lost_packets": 3, "duplicate_packets": 3, "late_packets": 1}


BAD = {
    "short": (b"DMCM", "4 bytes: shorter than a header (34)"),
    "marker": (b"XXXX" + stream(1)[0][4:], "frame marker b'XXXX', not b'DMCM'"),
    "length": (stream(1)[0][:-2], "544 bytes for 256 samples"),
    "no samples": (pack(1, 0, 0, 0.0, 0, 0, 2, 8, 1, b""), "34 bytes for 0 samples"),
    "outside": (pack(1, 0, 0, 0.0, 2, 0, 2, 8, 1, b"\0\0"), "row 2, columns 0..1 outside a 2x8 image"),
}


@pytest.mark.parametrize("data, why", BAD.values(), ids=BAD.keys())
def test_assembler_invalid_packets_raise_bad_packet_saying_why(data, why):
    assert fault(data) == why
    with pytest.raises(BadPacket, match=why.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        Assembler().add(data)


def test_assembler_a_packet_of_another_geometry_for_an_open_image_is_bad():
    assembler = Assembler()
    assembler.add(stream(1)[0])
    with pytest.raises(BadPacket, match="image 0 of board 1 is 2x1024, a packet of it says 4x1024"):
        assembler.add(pack(1, 1, 0, 0.0, 0, 256, 4, 1024, 1, numpy.zeros(256, "<u2")))
