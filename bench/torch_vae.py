#!/usr/bin/python3
"""The AutoencoderKL decoder (and encoder) in plain PyTorch (no diffusers: it is not
installable here), on the folder bench_vae wrote, checked against qdiff and timed.

    /usr/bin/python3 bench/torch_vae.py VAE_DIR IO.safetensors [--threads 2] [--steps 2]
                     [--precision fp32,bf16] [--encode] [--idle-wait 300]

VAE_DIR is the folder `bench_vae --keep` leaves (config.json + safetensors); IO is what
`bench_vae --save` writes: the latent z and qdiff's decode (and, with --encode, the
image and qdiff's encoded mean). The model mirrors diffusers 0.32's Encoder/Decoder
(ResnetBlock2D without time embedding, UNetMidBlock2D with one single-head attention,
Upsample2D nearest 2x + conv, Downsample2D pad (0,1,0,1) + stride-2 conv, GroupNorm eps
1e-6) computed from the stored weights. fp32 runs in fp32; bf16 converts the weights
and the input to bfloat16 (what diffusers' from_pretrained(torch_dtype=torch.bfloat16)
does; oneDNN's bf16 convolutions and matmuls). Prints seconds per decode, GFLOP/s, and the
relative L2 difference to qdiff's output (a check of both implementations).
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_unet import load_safetensors, wait_idle, machine_busy, self_cpu  # noqa: E402


class VAE:
    def __init__(self, cfg, W):
        self.W = W
        self.ch = cfg["block_out_channels"]
        self.layers = cfg.get("layers_per_block", 1)
        self.groups = cfg.get("norm_num_groups", 32)
        self.attn = cfg.get("mid_block_add_attention", True)

    def conv(self, x, p, stride=1, padding=1):
        return F.conv2d(x, self.W[p + ".weight"], self.W[p + ".bias"], stride=stride, padding=padding)

    def gn(self, x, p):
        return F.group_norm(x, self.groups, self.W[p + ".weight"], self.W[p + ".bias"], 1e-6)

    def resnet(self, x, p):
        h = self.conv(F.silu(self.gn(x, p + ".norm1")), p + ".conv1")
        h = self.conv(F.silu(self.gn(h, p + ".norm2")), p + ".conv2")
        if p + ".conv_shortcut.weight" in self.W:
            x = self.conv(x, p + ".conv_shortcut", padding=0)
        return x + h

    def attention(self, x, p):
        B, C, H, Wd = x.shape
        h = self.gn(x, p + ".group_norm").reshape(B, C, H * Wd).transpose(1, 2)
        q, k, v = (F.linear(h, self.W[p + n + ".weight"], self.W[p + n + ".bias"]) for n in (".to_q", ".to_k", ".to_v"))
        s = torch.baddbmm(torch.empty(B, H * Wd, H * Wd, dtype=q.dtype), q, k.transpose(1, 2), beta=0, alpha=C ** -0.5)
        o = torch.bmm(s.softmax(dim=-1), v)
        o = F.linear(o, self.W[p + ".to_out.0.weight"], self.W[p + ".to_out.0.bias"])
        return x + o.transpose(1, 2).reshape(B, C, H, Wd)

    def mid(self, x, p):
        x = self.resnet(x, p + ".mid_block.resnets.0")
        if self.attn:
            x = self.attention(x, p + ".mid_block.attentions.0")
        return self.resnet(x, p + ".mid_block.resnets.1")

    def decode(self, z):
        if "post_quant_conv.weight" in self.W:
            z = self.conv(z, "post_quant_conv", padding=0)
        x = self.mid(self.conv(z, "decoder.conv_in"), "decoder")
        n = len(self.ch)
        for i in range(n):
            for j in range(self.layers + 1):
                x = self.resnet(x, "decoder.up_blocks.%d.resnets.%d" % (i, j))
            if i < n - 1:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
                x = self.conv(x, "decoder.up_blocks.%d.upsamplers.0.conv" % i)
        return self.conv(F.silu(self.gn(x, "decoder.conv_norm_out")), "decoder.conv_out")

    def encode_mean(self, img):
        x = self.conv(img, "encoder.conv_in")
        n = len(self.ch)
        for i in range(n):
            for j in range(self.layers):
                x = self.resnet(x, "encoder.down_blocks.%d.resnets.%d" % (i, j))
            if i < n - 1:
                x = self.conv(F.pad(x, (0, 1, 0, 1)), "encoder.down_blocks.%d.downsamplers.0.conv" % i, stride=2, padding=0)
        x = self.mid(x, "encoder")
        x = self.conv(F.silu(self.gn(x, "encoder.conv_norm_out")), "encoder.conv_out")
        if "quant_conv.weight" in self.W:
            x = self.conv(x, "quant_conv", padding=0)
        return x[:, : x.shape[1] // 2]


def nominal_gflop(cfg, h, w, decode=True):
    """Multiply-adds x 2 of the convs, linears and attention of one decode (encode)."""
    ch, L, lat = cfg["block_out_channels"], cfg.get("layers_per_block", 1), cfg.get("latent_channels", 4)
    n, f = len(ch), 0.0

    def conv(cin, cout, k, hh, ww):
        return 2.0 * cin * cout * k * k * hh * ww

    def res(cin, cout, hh, ww):
        return conv(cin, cout, 3, hh, ww) + conv(cout, cout, 3, hh, ww) + (conv(cin, cout, 1, hh, ww) if cin != cout else 0)

    def mid(c, hh, ww):
        s = hh * ww
        return 2 * res(c, c, hh, ww) + 4 * 2.0 * s * c * c + 4.0 * s * s * c

    if decode:
        hh, ww = h, w
        f += conv(lat, lat, 1, hh, ww) + conv(lat, ch[-1], 3, hh, ww) + mid(ch[-1], hh, ww)
        for i in range(n):
            cin, cout = ch[n - 1] if i == 0 else ch[n - i], ch[n - 1 - i]
            for j in range(L + 1):
                f += res(cin if j == 0 else cout, cout, hh, ww)
            if i < n - 1:
                hh, ww = 2 * hh, 2 * ww
                f += conv(cout, cout, 3, hh, ww)
        f += conv(ch[0], 3, 3, hh, ww)
    else:
        hh, ww = h, w
        f += conv(3, ch[0], 3, hh, ww)
        for i in range(n):
            cin = ch[i - 1] if i else ch[0]
            for j in range(L):
                f += res(cin if j == 0 else ch[i], ch[i], hh, ww)
            if i < n - 1:
                hh, ww = hh // 2, ww // 2
                f += conv(ch[i], ch[i], 3, hh, ww)
        f += mid(ch[-1], hh, ww) + conv(ch[-1], 2 * lat, 3, hh, ww) + conv(2 * lat, 2 * lat, 1, hh, ww)
    return f / 1e9


def rel_l2(a, b):
    return float(torch.linalg.norm((a - b).flatten()) / torch.linalg.norm(b.flatten()))


def timed(fn, steps, idle_wait):
    best, others_best = 1e30, 0.0
    ncpu = os.cpu_count()
    out = None
    for i in range(steps):
        wait_idle(idle_wait)
        b0, s0, t0 = machine_busy(), self_cpu(), time.perf_counter()
        with torch.no_grad():
            out = fn()
        s, cpu = time.perf_counter() - t0, self_cpu() - s0
        others = max(0.0, ((machine_busy() - b0) - cpu) / (s * ncpu))
        print("  run %d: %.3f s, CPU %.2f s (other processes: %.0f%% of the CPUs)" % (i + 1, s, cpu, 100 * others), flush=True)
        if s < best:
            best, others_best = s, others
    return best, others_best, out.float()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("vae_dir")
    ap.add_argument("io")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--precision", default="fp32,bf16")
    ap.add_argument("--encode", action="store_true")
    ap.add_argument("--idle-wait", type=float, default=300, help="wait at most this long for an idle machine before each run")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = json.load(open(os.path.join(a.vae_dir, "config.json")))
    W = load_safetensors(os.path.join(a.vae_dir, "diffusion_pytorch_model.safetensors"))
    io = load_safetensors(a.io)
    z, ref = io["z"], io["decoded"]
    h, w = z.shape[2], z.shape[3]
    print("torch %s, %d threads, oneDNN %s, latent %dx%d -> image %dx%d" % (
        torch.__version__, torch.get_num_threads(), torch.backends.mkldnn.is_available(), h, w, ref.shape[2], ref.shape[3]),
        flush=True)
    gf = nominal_gflop(cfg, h, w)
    for prec in a.precision.split(","):
        dt = torch.bfloat16 if prec == "bf16" else torch.float32
        vae = VAE(cfg, {k: v.to(dt) for k, v in W.items()})
        print("decode %s:" % prec, flush=True)
        best, others, out = timed(lambda: vae.decode(z.to(dt)), a.steps, a.idle_wait)
        print("decode %-4s %.3f s  %.1f GFLOP  %.1f GFLOP/s  rel L2 vs qdiff %.3g%s" % (
            prec, best, gf, gf / best, rel_l2(out, ref), "  (other processes %.0f%%: NOT clean)" % (100 * others) if others > 0.05 else ""),
            flush=True)
        if a.encode and "image" in io:
            ge = nominal_gflop(cfg, io["image"].shape[2], io["image"].shape[3], decode=False)
            print("encode %s:" % prec, flush=True)
            best, others, m = timed(lambda: vae.encode_mean(io["image"].to(dt)), a.steps, a.idle_wait)
            print("encode %-4s %.3f s  %.1f GFLOP  %.1f GFLOP/s  mean rel L2 vs qdiff %.3g" % (
                prec, best, ge, ge / best, rel_l2(m, io["mean"])), flush=True)


if __name__ == "__main__":
    main()
