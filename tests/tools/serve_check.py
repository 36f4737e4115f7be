#!/usr/bin/env python3
"""Helpers of tests/cli_serve.sh and cli_web.sh for reading what qdiff serve answered
(standard library only: json, base64, zlib).

  serve_check.py get FILE PATH         print a JSON value: PATH like error.message,
                                       state.sampling_step, images.0; "info.X" reads
                                       A1111's info string as JSON. Strings raw,
                                       others as JSON. Exit 1 if missing.
  serve_check.py images FILE PREFIX    write A1111 images[] / OpenAI data[].b64_json
                                       to PREFIX-0.png, PREFIX-1.png, ...; print count
  serve_check.py b64 FILE PATH OUT     decode the base64 string at PATH to OUT
  serve_check.py same A.png B.png      exit 0 if both decode to the same size and
                                       pixel bytes (else print how they differ)
  serve_check.py size A.png            print WIDTHxHEIGHT
  serve_check.py text A.png [KEY]      print the tEXt chunk KEY (default parameters)
"""
import base64
import json
import struct
import sys
import zlib


def load(path):
    with open(path, "rb") as f:
        return json.loads(f.read())


def lookup(doc, path):
    cur = doc
    for part in path.split("."):
        if isinstance(cur, str):   # A1111's info is a JSON document inside a string
            cur = json.loads(cur)
        if isinstance(cur, list):
            cur = cur[int(part)]
        elif isinstance(cur, dict):
            cur = cur[part]
        else:
            raise KeyError(part)
    return cur


def png_chunks(data):
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos = 8
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if zlib.crc32(kind + body) != struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]:
            raise ValueError("bad CRC in chunk %r" % kind)
        yield kind.decode("latin-1"), body
        pos += 12 + n


def png_pixels(path):
    """(width, height, raw RGB8 bytes) of an 8-bit RGB non-interlaced PNG."""
    with open(path, "rb") as f:
        data = f.read()
    idat = b""
    w = h = None
    for kind, body in png_chunks(data):
        if kind == "IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if (depth, ctype, interlace) != (8, 2, 0):
                raise ValueError("%s: expected 8-bit RGB, not interlaced" % path)
        elif kind == "IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride, bpp = w * 3, 3
    out = bytearray()
    prev = bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
            elif f != 0:
                raise ValueError("%s: bad filter %d" % (path, f))
        out += line
        prev = line
    return w, h, bytes(out)


def main(argv):
    cmd = argv[1]
    if cmd == "get":
        try:
            v = lookup(load(argv[2]), argv[3])
        except (KeyError, IndexError, ValueError, TypeError):
            return 1
        print(v if isinstance(v, str) else json.dumps(v))
        return 0
    if cmd == "images":
        doc = load(argv[2])
        blobs = doc["images"] if "images" in doc else [d["b64_json"] for d in doc["data"]]
        for i, b in enumerate(blobs):
            with open("%s-%d.png" % (argv[3], i), "wb") as f:
                f.write(base64.b64decode(b, validate=True))
        print(len(blobs))
        return 0
    if cmd == "b64":
        with open(argv[4], "wb") as f:
            f.write(base64.b64decode(lookup(load(argv[2]), argv[3]), validate=True))
        return 0
    if cmd == "same":
        wa, ha, pa = png_pixels(argv[2])
        wb, hb, pb = png_pixels(argv[3])
        if (wa, ha) != (wb, hb):
            print("sizes differ: %dx%d vs %dx%d" % (wa, ha, wb, hb))
            return 1
        diff = [abs(x - y) for x, y in zip(pa, pb) if x != y]
        if diff:
            print("%d of %d values differ (max %d)" % (len(diff), len(pa), max(diff)))
            return 1
        return 0
    if cmd == "size":
        w, h, _ = png_pixels(argv[2])
        print("%dx%d" % (w, h))
        return 0
    if cmd == "text":
        key = argv[3] if len(argv) > 3 else "parameters"
        with open(argv[2], "rb") as f:
            data = f.read()
        for kind, body in png_chunks(data):
            if kind == "tEXt" and body.split(b"\0", 1)[0].decode("latin-1") == key:
                print(body.split(b"\0", 1)[1].decode("latin-1"))
                return 0
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
