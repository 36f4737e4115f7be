#!/usr/bin/python3
"""Writes tests/fixtures/pth/*.pth for test_pth and test_taesd (run from the repo root).

Needs Debian's python3-torch (apt-get install -y python3-torch); the outputs are
committed so the tests need no Python.

  state.pth          torch.save of an OrderedDict state dict: float32 / float16 /
                     bfloat16 / int64 / bool tensors, a transposed (strided) view,
                     two views sharing one storage at offsets, a 0-d scalar, an
                     empty tensor, an nn.Parameter and a nested dict. Values follow
                     the formulas in test_pth.c.
  module_state.pth   an nn.Sequential(Conv2d(3, 4, 3), GroupNorm(2, 4)).state_dict(), with
                     the _metadata attribute real state dicts carry; 0.bias = [1, 2, 3, 4].
  taef2_decoder.pth  tests/fixtures/taesd/taef2_decoder.safetensors re-saved the way
                     taesd.py's published .pth files are (a Sequential state_dict, fp16).
  evil_*.pth         archives whose data.pkl calls a function (os.system, builtins.eval,
                     posix.system hidden inside a state dict, INST of os.system). Loading
                     them must fail without running anything: they would create /tmp/qd_pth_pwned.
  bad_*.pth          malformed pickles: an out-of-range memo index, a list instead of a dict.
"""
import collections
import io
import json
import os
import struct
import zipfile

import torch

OUT = "tests/fixtures/pth"


def state():
    sd = collections.OrderedDict()
    sd["conv.weight"] = (torch.arange(4 * 3 * 3 * 3, dtype=torch.float32) / 10).reshape(4, 3, 3, 3)
    sd["conv.bias"] = torch.tensor([0.5, -1.25, 2.0, 1024.0], dtype=torch.float16)
    sd["norm.weight"] = (torch.arange(8, dtype=torch.float32) - 3.5).to(torch.bfloat16)
    sd["steps"] = torch.tensor([0, 1, -2, 3000000000, -5], dtype=torch.int64)
    sd["mask"] = torch.tensor([True, False, True])
    base = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    sd["transposed"] = base.t()                      # shape [3, 2], stride (1, 3)
    shared = torch.arange(10, dtype=torch.float32) * 2
    sd["view_a"] = shared[2:6]                       # storage offset 2
    sd["view_b"] = shared[5:].reshape(5, 1)          # storage offset 5, same storage
    sd["scalar"] = torch.tensor(7.5)
    sd["empty"] = torch.zeros(0, 4)
    sd["param"] = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    sd["nested"] = {"inner.weight": torch.tensor([[1.0, -1.0]], dtype=torch.float64)}
    sd["epoch"] = 12                                 # non-tensor values are ignored
    sd["name"] = "not a tensor"
    return sd


def module_state():
    """A real nn.Module state_dict: it carries _metadata (pickled through BUILD)."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4))
    with torch.no_grad():
        m[0].bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    return m.state_dict()


def read_safetensors(path):
    with open(path, "rb") as f:
        b = f.read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    dtypes = {"F16": torch.float16, "F32": torch.float32, "BF16": torch.bfloat16}
    out = collections.OrderedDict()
    for name in sorted(header, key=lambda k: (len(k.split(".")[0]), k)):
        if name == "__metadata__":
            continue
        info = header[name]
        s, e = info["data_offsets"]
        t = torch.frombuffer(bytearray(b[8 + n + s:8 + n + e]), dtype=dtypes[info["dtype"]])
        out[name] = t.reshape(info["shape"]).clone()
    return out


def evil_zip(path, pkl):
    """A torch.save-shaped archive around a hand-written pickle."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in (("archive/data.pkl", pkl), ("archive/version", b"3\n")):
            z.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data)   # reproducible bytes


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/qd_pth_pwned",))


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.save(state(), f"{OUT}/state.pth")
    torch.save(module_state(), f"{OUT}/module_state.pth")
    torch.save(read_safetensors("tests/fixtures/taesd/taef2_decoder.safetensors"), f"{OUT}/taef2_decoder.pth")

    cmd = b"touch /tmp/qd_pth_pwned"
    # protocol 2: GLOBAL 'os system', the argument tuple, REDUCE
    evil_zip(f"{OUT}/evil_os_system.pth",
             b"\x80\x02cos\nsystem\nq\x00X" + struct.pack("<I", len(cmd)) + cmd + b"\x85q\x01Rq\x02.")
    # protocol 4: STACK_GLOBAL builtins.eval
    code = b"__import__('os').system('touch /tmp/qd_pth_pwned')"
    evil_zip(f"{OUT}/evil_builtins_eval.pth",
             b"\x80\x04\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94X" + struct.pack("<I", len(code)) + code +
             b"\x94\x85\x94R\x94.")
    # protocol 0's INST opcode instantiates a class by name: an opcode the reader refuses
    evil_zip(f"{OUT}/evil_inst_opcode.pth", b"(ios\nsystem\nX\x04\x00\x00\x00true.")
    # malformed: a memo index far beyond anything stored, and a list where the dict should be
    evil_zip(f"{OUT}/bad_memo_index.pth", b"\x80\x02}r\xff\xff\xff\x7f.")
    evil_zip(f"{OUT}/bad_not_a_dict.pth", b"\x80\x02]q\x00.")
    # a real state dict with one value whose pickle calls posix.system (os.system's home)
    sd = collections.OrderedDict(weight=torch.ones(2), bias=Evil())
    buf = io.BytesIO()
    torch.save(sd, buf)
    with open(f"{OUT}/evil_in_state_dict.pth", "wb") as f:
        f.write(buf.getvalue())


if __name__ == "__main__":
    main()
