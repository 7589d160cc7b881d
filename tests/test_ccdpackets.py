"""The assembler core of the CCD readers, alone: packets in any order, twice, lost, late, of any size, into images,
one at a time or a receiver's batch at once."""

import random

import numpy
import pytest

from clients.sim.ccdpackets import MAX_PACKET, SEQ_SPAN, Assembler, BadPacket, fault, pack


def stream(images=3, rows=2, cols=1024, size=256, first_seq=0, first_image=0):
    """The packets a board sends for `images` images, in sequence order; pixel values tell image, row and column."""
    packets, seq = [], first_seq
    for image in range(first_image, first_image + images):
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


def batch_of(packets, width=MAX_PACKET):
    """A receiver's batch of `packets`: a row of `width` bytes each (a longer one cut), and their lengths."""
    slots = numpy.zeros((len(packets), width), numpy.uint8)
    for row, packet in zip(slots, packets):
        row[:min(len(packet), width)] = numpy.frombuffer(packet[:width], numpy.uint8)
    return slots, numpy.array([len(packet) for packet in packets], numpy.int64)


def one_by_one(packets, window):
    assembler, images, invalid = Assembler(window), [], []
    for packet in packets:
        try:
            images += assembler.add(packet)
        except BadPacket as exc:
            invalid.append((packet, str(exc)))
    return images + assembler.flush(), invalid, assembler


def in_batches(packets, window, rng):
    assembler, images, invalid, at = Assembler(window), [], [], 0
    while at < len(packets):
        taken = rng.choice([1, 7, 40, 200, 500])   # below and above the size from which headers are read together
        let_go, bad = assembler.add_batch(*batch_of(packets[at:at + taken]))
        images, invalid, at = images + let_go, invalid + bad, at + taken
    return images + assembler.flush(), invalid, assembler


def messed_up(rng, packets):
    """`packets` as UDP and a bad link deliver them: some lost, twice, garbled or cut, a few swapped."""
    out = []
    for packet in packets:
        draw = rng.random()
        if draw < 0.02:
            continue
        if draw < 0.04:
            out += [packet, packet]
        elif draw < 0.05:
            out.append(b"XXXX" + packet[4:])
        elif draw < 0.055:
            out.append(packet[:-2])
        else:
            out.append(packet)
    for _ in range(rng.randrange(6)):
        one, other = rng.randrange(len(out)), rng.randrange(len(out))
        out[one], out[other] = out[other], out[one]
    return out


@pytest.mark.parametrize("seed", range(8))
def test_assembler_a_batch_gives_exactly_what_its_packets_give_one_by_one(seed):
    rng = random.Random(seed)
    for _ in range(12):
        rows, cols, size = rng.choice([(2, 1024, 256), (3, 990, 495), (4, 1000, 256), (8, 64, 16), (16, 128, 128)])
        images, first_seq = rng.randint(2, 8), rng.choice([0, SEQ_SPAN - 50])
        packets = stream(images, rows, cols, size, first_seq)
        again = stream(1, rows, cols, size, first_seq + len(packets), first_image=images - 1)
        packets = messed_up(rng, packets[:-1]) + again   # the last image sent again, in order, on the same places
        window = rng.choice([4, 16, 1024])
        (alone, bad_alone, by_one), (batched, bad_batched, by_batch) = \
            one_by_one(packets, window), in_batches(packets, window, rng)
        assert [(i.board, i.number, i.missing, i.received) for i in batched] == \
            [(i.board, i.number, i.missing, i.received) for i in alone]
        assert all((one.pixels == other.pixels).all() for one, other in zip(batched, alone))
        assert bad_batched == bad_alone and by_batch.counts() == by_one.counts()


def test_assembler_a_datagram_longer_than_any_packet_in_a_batch_is_bad_saying_its_length():
    assembler = Assembler()
    images, invalid = assembler.add_batch(*batch_of([*stream(1)[:4], b"x" * 9000, *stream(1)[4:]]))
    assert [(image.number, image.missing) for image in images] == [(0, 0)]
    assert invalid == [(b"x" * MAX_PACKET, f"9000 bytes: longer than any packet ({MAX_PACKET})")]
