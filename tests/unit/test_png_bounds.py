"""PNG chunks and frames cost bounded work in the decoder the service, scoring and ingest share: Pillow's own limits
on text and ICC chunks and its first-frame decoding hold; these files pin them (an upgrade that loosened one fails)."""

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from tasks.shipped.imaging import NotAnImage, decode_image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(seed: int = 0, side: int = 64) -> bytes:
    out = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((side, side)) * 255).astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


ZEROS = zlib.compress(b"\0" * (64 * 2**20), 9)  # 64 MB inflated, 64 KB sent
AFTER_IHDR = 8 + 25


def _with(png: bytes, *chunks: bytes) -> bytes:
    return png[:AFTER_IHDR] + b"".join(chunks) + png[AFTER_IHDR:]


def _cpu(data: bytes) -> tuple[str, float]:
    began = time.process_time()
    try:
        decode_image(data, (8, 8), 1, 16_000_000)
        outcome = "decoded"
    except NotAnImage as err:
        outcome = str(err)
    return outcome, time.process_time() - began


@pytest.mark.parametrize("name, body, refused", [
    ("20,000 text chunks", lambda png: _with(png, *[_chunk(b"tEXt", b"k\0" + b"v" * 10)] * 20_000), False),
    ("a zTXt chunk inflating to 64 MB", lambda png: _with(png, _chunk(b"zTXt", b"k\0\0" + ZEROS)), True),
    ("an iCCP profile inflating to 64 MB", lambda png: _with(png, _chunk(b"iCCP", b"p\0\0" + ZEROS)), True),
])
def test_png_chunks_cost_bounded_work(name, body, refused):
    outcome, cpu = _cpu(body(_png()))
    assert cpu < 0.5, (name, cpu)
    assert (outcome != "decoded") == refused, (name, outcome)
    if refused:
        assert "too large" in outcome


def test_an_animated_png_costs_its_first_frame_only():
    frames = [Image.fromarray((np.random.default_rng(i).random((128, 128)) * 255).astype(np.uint8)) for i in range(60)]
    out = io.BytesIO()
    frames[0].save(out, "PNG", save_all=True, append_images=frames[1:])
    one_frame = _cpu(_png(0, 128))[1]
    outcome, cpu = _cpu(out.getvalue())
    assert outcome == "decoded" and cpu < max(0.05, 20 * one_frame)
