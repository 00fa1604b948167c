"""Mutated files for fuzzing: random byte edits, and edits that know a format's structure (JPEG scans)."""

from __future__ import annotations

import numpy as np


def mutants(body: bytes, count: int, seed: int, region: tuple[int, int] | None = None) -> list[bytes]:
    """`body` with a few random bytes flipped, cut short or stretched (inside `region`, when given: a header, a
    footer): what a broken client, a bad disk or a fuzzer makes."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        mutant = bytearray(body)
        for _ in range(int(rng.integers(1, 6))):
            low, high = (region[0], min(region[1], len(mutant))) if region else (0, len(mutant))
            where = int(rng.integers(low, high)) if high > low else 0
            action = rng.integers(0, 3)
            if action == 0:
                mutant[where] = int(rng.integers(0, 256))
            elif action == 1:
                del mutant[where:where + int(rng.integers(1, 16))]
            else:
                mutant[where:where] = bytes(rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8))
        out.append(bytes(mutant))
    return out


def jpeg_segments(data: bytes) -> list[bytes]:
    """A JPEG cut into its marker segments; a scan (SOS) segment keeps its entropy-coded data with it."""
    segments, i = [data[:2]], 2  # SOI
    while i < len(data) - 1:
        marker = data[i + 1]
        if marker == 0xD9:  # EOI
            segments.append(data[i:i + 2])
            break
        length = int.from_bytes(data[i + 2:i + 4], "big")
        end = i + 2 + length
        if marker == 0xDA:  # entropy-coded data runs to the next marker that is not stuffing or a restart
            while end < len(data) - 1 and not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        segments.append(data[i:end])
        i = end
    return segments


def jpeg_scan_mutants(data: bytes, count: int, seed: int) -> list[bytes]:
    """A progressive JPEG with its scan structure edited: scans repeated (up to 60 times), dropped, swapped, their
    spectral-selection and approximation bytes changed, Huffman tables repeated."""
    rng = np.random.default_rng(seed)
    segments = jpeg_segments(data)
    scans = [k for k, s in enumerate(segments) if s[1:2] == b"\xda"]
    tables = [k for k, s in enumerate(segments) if s[1:2] == b"\xc4"]
    out = []
    for _ in range(count):
        edited = list(segments)
        action = int(rng.integers(0, 5))
        k = int(rng.choice(scans))
        if action == 0:  # one scan repeated: each repeat is decoded in full
            edited[k + 1:k + 1] = [segments[k]] * int(rng.integers(1, 60))
        elif action == 1:
            del edited[k]
        elif action == 2:
            j = int(rng.choice(scans))
            edited[k], edited[j] = edited[j], edited[k]
        elif action == 3:  # Ss, Se, Ah/Al: the three bytes before the entropy-coded data
            scan = bytearray(edited[k])
            header_end = 4 + int.from_bytes(scan[2:4], "big") - 2
            scan[header_end - int(rng.integers(1, 4))] = int(rng.integers(0, 256))
            edited[k] = bytes(scan)
        else:
            t = int(rng.choice(tables))
            edited[t + 1:t + 1] = [segments[t]] * int(rng.integers(1, 30))
        out.append(b"".join(edited))
    return out
