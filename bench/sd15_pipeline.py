#!/usr/bin/python3
"""A real-size SD1.5 diffusers folder with random weights, to measure a whole
`qdiff generate` (text encoder, UNet steps, VAE decode): peak RSS against the weights.

    bench/sd15_pipeline.py OUT_DIR UNET_DIR VAE_DIR [--fixtures tests/fixtures]

UNET_DIR and VAE_DIR are folders bench_unet / bench_vae wrote and kept (--keep); they are
symlinked as OUT_DIR/unet and OUT_DIR/vae. The text encoder is written here: CLIPTextModel
at SD1.5's size (ViT-L/14 text tower: 12 layers, hidden 768, 12 heads, MLP 3072, quick_gelu),
its tensor names taken from the sd15-tiny fixture (same model, tiny sizes), F16 values
N(0, 1/fan_in) for matrices, 0.02 * N(0, 1) for biases and embeddings, 1 for norm scales.
Tokenizer, scheduler and model_index.json are the fixture's (the tokenizer is SD1.5's
vocabulary size). Needs numpy only.
"""
import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np

HIDDEN, MLP, LAYERS, HEADS = 768, 3072, 12, 12


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("unet")
    ap.add_argument("vae")
    ap.add_argument("--fixtures", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    a = ap.parse_args()
    tiny = os.path.join(a.fixtures, "models", "sd15-tiny")
    for d in (a.unet, a.vae):
        if not os.path.exists(os.path.join(d, "config.json")):
            sys.exit(f"{d}: no config.json (write it with bench_unet/bench_vae --keep)")
    os.makedirs(a.out, exist_ok=True)
    for name, src in (("unet", a.unet), ("vae", a.vae)):
        dst = os.path.join(a.out, name)
        if os.path.islink(dst) or os.path.exists(dst):
            os.remove(dst) if os.path.islink(dst) else shutil.rmtree(dst)
        os.symlink(os.path.abspath(src), dst)
    for name in ("tokenizer", "scheduler"):
        shutil.copytree(os.path.join(tiny, name), os.path.join(a.out, name), dirs_exist_ok=True)
    shutil.copy(os.path.join(tiny, "model_index.json"), a.out)

    te = os.path.join(a.out, "text_encoder")
    os.makedirs(te, exist_ok=True)
    cfg = json.load(open(os.path.join(tiny, "text_encoder", "config.json")))
    cfg.update(hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
               projection_dim=768)
    json.dump(cfg, open(os.path.join(te, "config.json"), "w"), indent=2)

    with open(os.path.join(tiny, "text_encoder", "model.safetensors"), "rb") as f:
        hdr = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    tiny_h, tiny_m = 32, 64      # the fixture's hidden and MLP sizes
    names = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        shape = [HIDDEN if s == tiny_h else MLP if s == tiny_m else s for s in v["shape"]]
        if ".layers.0." in k:
            for i in range(LAYERS):
                names[k.replace(".layers.0.", f".layers.{i}.")] = shape
        elif ".layers." not in k:
            names[k] = shape
    rng = np.random.default_rng(1234)
    tensors, off, meta = [], 0, {}
    for k in sorted(names):
        shape = names[k]
        if k.endswith("weight") and len(shape) == 2 and "embedding" not in k:
            t = rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[1])
        elif "norm" in k and k.endswith("weight"):
            t = np.ones(shape, np.float32)
        else:
            t = 0.02 * rng.standard_normal(shape, dtype=np.float32)
        b = t.astype(np.float16).tobytes()
        meta[k] = {"dtype": "F16", "shape": shape, "data_offsets": [off, off + len(b)]}
        tensors.append(b)
        off += len(b)
    h = json.dumps(meta).encode()
    h += b" " * (-len(h) % 8)
    tmp = os.path.join(te, "model.safetensors.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in tensors:
            f.write(b)
    os.replace(tmp, os.path.join(te, "model.safetensors"))
    total = sum(os.path.getsize(os.path.join(os.path.realpath(os.path.join(a.out, c)), n))
                for c, n in (("unet", "diffusion_pytorch_model.safetensors"),
                             ("vae", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")))
    print(f"{a.out}: SD1.5 pipeline, weights {total / 1e6:.0f} MB (unet + vae + text encoder files)")


if __name__ == "__main__":
    main()
