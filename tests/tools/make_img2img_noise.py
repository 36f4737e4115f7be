#!/usr/bin/env python3
"""torch's CPU generator streams the image-to-image tests compare with
(tests/test_img2img.c), written to tests/fixtures/img2img/torch_noise.safetensors.

diffusers' Img2Img pipelines draw from one torch.Generator('cpu').manual_seed(seed):
first latent_dist.sample() of the encoded image ([images, C, h, w]), then the noise
([batch, C, h, w]). Each case here is those two draws, in that order:
  sd15_sample, sd15_noise   seed 42: [1, 4, 8, 8] then [2, 4, 8, 8]
  flux_sample, flux_noise   seed 7:  [1, 16, 8, 8] then [1, 16, 8, 8]
Run with the Debian python3-torch (python3 tests/tools/make_img2img_noise.py OUT)."""
import json
import struct
import sys

import torch


def draws(seed, first, second):
    g = torch.Generator("cpu").manual_seed(seed)
    a = torch.randn(first, generator=g, dtype=torch.float32)
    b = torch.randn(second, generator=g, dtype=torch.float32)
    return a, b


def st_write(path, tensors):
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        data = t.contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/img2img/torch_noise.safetensors"
    t = {}
    t["sd15_sample"], t["sd15_noise"] = draws(42, (1, 4, 8, 8), (2, 4, 8, 8))
    t["flux_sample"], t["flux_noise"] = draws(7, (1, 16, 8, 8), (1, 16, 8, 8))
    st_write(out, t)


if __name__ == "__main__":
    main()
