"""tools/bench_codec: single-snapshot compression of real weights, casckpt's codecs vs ZipNN.

The bytes are MiniLM's (``realweights.minilm``, fp32) and the same cast to bf16, plus the delta of two
consecutive AdamW-like steps of each: the zigzag difference a delta chunk holds since store format 4,
and the XOR it held before. Every tensor is cut into casckpt's chunks (2 MiB), and each chunk is
compressed and decompressed by casckpt's byte-grouped codec 2 (what stores wrote before codec 3),
codec 3 (whole-byte exponents; the default for 4- and 8-byte floats), codec 4 (the top 16 bits
rotated; the default for 2-byte floats, and for 4-byte ones in store format 3) and ZipNN (``zipnn``,
one thread), one after another on the same chunk, for several rounds. Figures are medians over the
rounds; MB/s are raw bytes per second of the process's CPU time (``time.process_time``), which a
machine shared with other jobs disturbs far less than wall time, and which counts every thread a
library might start.

    .venv/bin/python tools/bench_codec.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from casckpt import chunking, codec, planes
from realweights import minilm

LR = 1e-4  # AdamW step size of the XOR data sets (README, Performance: a fine-tune's)


def to_bf16(w: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bits (uint16), rounding to nearest even like torch."""
    u = w.view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def adamw_step(w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``w`` after one AdamW-like step: a normalised update of about ``LR`` per element (Adam's
    m/√v is O(1) whatever the weight's scale) plus decoupled weight decay 0.01."""
    update = np.clip(rng.standard_normal(w.shape, dtype=np.float32), -3, 3)
    return (w - np.float32(LR) * update - np.float32(LR * 0.01) * w).astype(np.float32)


def datasets() -> dict[str, tuple[list[np.ndarray], str]]:
    """Name → (tensors as arrays, ZipNN's dtype name) for each set of bytes compared."""
    weights = list(minilm().values())
    rng = np.random.default_rng(0)
    stepped = [adamw_step(w, rng) for w in weights]
    return {
        "fp32": (weights, "float32"),
        "bf16": ([to_bf16(w) for w in weights], "bfloat16"),
        "fp32_sub_step": ([zigzag(b, a, 4) for a, b in zip(weights, stepped)], "float32"),
        "bf16_sub_step": ([zigzag(to_bf16(b), to_bf16(a), 2) for a, b in zip(weights, stepped)], "bfloat16"),
        "fp32_xor_step": ([a.view(np.uint32) ^ b.view(np.uint32) for a, b in zip(weights, stepped)], "float32"),
        "bf16_xor_step": ([to_bf16(a) ^ to_bf16(b) for a, b in zip(weights, stepped)], "bfloat16"),
    }


def zigzag(new: np.ndarray, old: np.ndarray, w: int) -> np.ndarray:
    """What a delta chunk of floats codes (casckpt.delta.make): zigzag(new - old) as integers."""
    return np.frombuffer(planes.zigzag_sub(new.tobytes(), old.tobytes(), w), dtype=f"<u{w}").reshape(new.shape)


def chunks_of(arrays: list[np.ndarray]) -> list[memoryview]:
    """Each tensor's bytes cut into chunks where the store cuts them (default chunk size)."""
    out = []
    for a in arrays:
        raw = memoryview(np.ascontiguousarray(a)).cast("B")
        spans = chunking.spans(a.shape, a.itemsize, chunking.DEFAULT_CHUNK_SIZE)
        out += [raw[o:o + n] for o, n in spans]
    return out


class Casckpt:
    """A store writes the parts ``encode`` returns as they are; joining them is not timed."""

    def __init__(self, which: int, group: int):
        self.which, self.group = which, group  # codec.BG, BGX or BGR (RAW when it does not pay)

    def prepare(self, chunk: memoryview) -> memoryview:
        return chunk

    def compress(self, chunk: memoryview):
        if self.which == codec.BGX:
            return codec._encode_exponent(chunk, self.group, codec._WORDS[self.group])
        if self.which == codec.BGR and self.group in (2, 4):
            return codec._encode_rotated(chunk, self.group)
        return codec.encode(chunk, group=self.group, config=codec.CodecConfig(exponent=self.which != codec.BG))

    def seal(self, packed):
        kind, parts = packed
        return kind, b"".join(parts)

    def decompress(self, packed, out: memoryview) -> memoryview:
        kind, payload = packed
        return codec.decode(kind, memoryview(payload), out.nbytes, out)

    @staticmethod
    def size(packed) -> int:
        return len(packed[1])


class Zipnn:
    """ZipNN with one thread. NOTE: zipnn 0.5.4 rewrites the buffer it compresses in place (even a
    ``bytes`` object), so each call gets a fresh copy, made outside the timed span."""

    def __init__(self, dtype: str):
        from zipnn import ZipNN
        self.z = ZipNN(input_format="byte", bytearray_dtype=dtype, threads=1)

    def prepare(self, chunk: memoryview) -> bytearray:
        return bytearray(chunk)

    def compress(self, chunk: bytearray) -> bytes:
        return self.z.compress(chunk)

    def seal(self, packed):
        return packed

    def decompress(self, packed, out: memoryview):
        return self.z.decompress(packed)

    @staticmethod
    def size(packed) -> int:
        return len(packed)


def coders(group: int, zipnn_dtype: str) -> dict[str, object]:
    out = {"casckpt_codec2": Casckpt(codec.BG, group),
           "casckpt_codec3": Casckpt(codec.BGX, group),
           "casckpt_codec4": Casckpt(codec.BGR, group)}
    try:
        out["zipnn"] = Zipnn(zipnn_dtype)
    except ImportError:  # the bench extra is not installed: casckpt's figures alone
        pass
    return out


def one_round(chunks: list[memoryview], coders_: dict, check: bool) -> dict[str, tuple[int, float, float]]:
    """(stored bytes, compress CPU s, decompress CPU s) per coder over all chunks."""
    acc = {name: [0, 0.0, 0.0] for name in coders_}
    for chunk in chunks:
        out = memoryview(bytearray(chunk.nbytes))
        for name, c in coders_.items():
            src = c.prepare(chunk)
            t0 = time.process_time()
            packed = c.compress(src)
            t1 = time.process_time()
            packed = c.seal(packed)
            t2 = time.process_time()
            back = c.decompress(packed, out)
            t3 = time.process_time()
            if check and bytes(back) != bytes(chunk):
                raise AssertionError(f"{name} did not round-trip a chunk")
            a = acc[name]
            a[0] += c.size(packed)
            a[1] += t1 - t0
            a[2] += t3 - t2
    return {name: tuple(a) for name, a in acc.items()}


def compression_report(rounds: int = 5) -> dict:
    """Per data set and coder: stored/raw and median compress / decompress MB/s (CPU time)."""
    report = {}
    for name, (arrays, zdtype) in datasets().items():
        chunks = chunks_of(arrays)
        raw = sum(c.nbytes for c in chunks)
        runs = [one_round(chunks, coders(arrays[0].itemsize, zdtype), check=(r == 0)) for r in range(rounds)]
        report[name] = {
            coder: {"stored_over_raw": runs[0][coder][0] / raw,
                    "compress_mb_s": statistics.median(raw / r[coder][1] / 1e6 for r in runs),
                    "decompress_mb_s": statistics.median(raw / r[coder][2] / 1e6 for r in runs)}
            for coder in runs[0]}
        report[name]["raw_mb"] = raw / 1e6
    return report


def flat(report: dict) -> dict:
    """``{"minilm_<data>_<coder>": figures}``: the shape tools/bench.py prints."""
    return {f"minilm_{data}_{coder}": v for data, coders_ in report.items()
            for coder, v in coders_.items() if isinstance(v, dict)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds per figure (median reported)")
    args = ap.parse_args()
    report = compression_report(args.rounds)
    print(f"real MiniLM weights, {chunking.DEFAULT_CHUNK_SIZE >> 20} MiB chunks per tensor, one thread, "
          f"median of {args.rounds} rounds, MB/s of raw bytes per CPU second")
    print(f"{'data':14s} {'coder':15s} {'stored/raw':>10s} {'compress':>14s} {'decompress':>14s}")
    for data, coders_ in report.items():
        for coder, v in coders_.items():
            if isinstance(v, dict):
                print(f"{data:14s} {coder:15s} {v['stored_over_raw']:10.5f} {v['compress_mb_s']:9.0f} MB/s "
                      f"{v['decompress_mb_s']:9.0f} MB/s")


if __name__ == "__main__":
    main()
