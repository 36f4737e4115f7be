#!/usr/bin/python3
"""A whole UNet2DConditionModel forward in plain PyTorch (no diffusers: it is not
installable here), on the folder bench_unet wrote, timed and checked against qdiff.

    /usr/bin/python3 bench/torch_unet.py UNET_DIR IO.safetensors [--threads 2] [--warmup 1] [--steps 1]
                                         [--dtype fp32|bf16] [--bf16-mode cast|autocast] [--tol X]

UNET_DIR is the folder `bench_unet --keep` leaves (config.json + safetensors); IO is
what `bench_unet --save` writes: the inputs (x, timestep, context and, for SDXL,
text_embeds and time_ids) and qdiff's output. The model below mirrors diffusers
0.32's UNet2DConditionModel for the SD1.x / SDXL options (ResnetBlock2D,
Transformer2DModel with BasicTransformerBlock, GEGLU, CrossAttn{Down,Up}Block2D, the
text_time embedding) with diffusers' torch-1.13 attention (AttnProcessor: baddbmm,
softmax, bmm), computed in fp32 from the stored weights. Prints seconds per step and
the relative L2 difference to qdiff's output (a check of both): below --tol (default
1e-3 for fp32, 5e-2 for bf16) or the exit status is 1.

--dtype bf16 is PyTorch's CPU bfloat16 (oneDNN's AVX512_BF16 kernels where the CPU has
them), two ways: --bf16-mode cast (default) converts the weights and inputs to bf16 once
(`.to(torch.bfloat16)`) and runs everything in bf16; autocast keeps fp32 weights and runs
under torch.autocast("cpu", bfloat16), which casts the operands of conv/linear/bmm per
call and keeps the norms and softmax in fp32. The output is compared in fp32.
"""
import argparse
import json
import math
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

DT = {"F16": np.float16, "BF16": None, "F32": np.float32}


def machine_busy():
    """Busy CPU seconds of the whole machine (user nice system irq softirq steal)."""
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


def self_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def wait_idle(max_s=None):
    """Wait (at most max_s, default $QD_BENCH_IDLE_WAIT or 300 s) until other processes use
    less than a fifth of a CPU."""
    if max_s is None:
        max_s = float(os.environ.get("QD_BENCH_IDLE_WAIT", "300"))
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_s:
        b0 = machine_busy()
        time.sleep(1)
        if machine_busy() - b0 < 0.2:
            return


def load_safetensors(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    base = 8 + n
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        raw = mm[base + b:base + e]
        if t["dtype"] == "BF16":
            u = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            arr = u.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=DT[t["dtype"]])
        out[name] = torch.from_numpy(arr.astype(np.float32).reshape(t["shape"]))
    return out


def per_block(cfg, key, nb, default):
    v = cfg.get(key)
    if v is None:
        v = default
    return list(v) if isinstance(v, list) else [v] * nb


class UNet:
    def __init__(self, cfg, W):
        self.c, self.W = cfg, W
        nb = len(cfg["block_out_channels"])
        self.nb = nb
        key = "num_attention_heads" if cfg.get("num_attention_heads") is not None else "attention_head_dim"
        self.heads = per_block(cfg, key, nb, 8)
        self.depth = per_block(cfg, "transformer_layers_per_block", nb, 1)
        self.layers = per_block(cfg, "layers_per_block", nb, 2)
        self.groups = cfg.get("norm_num_groups", 32)
        self.eps = cfg.get("norm_eps", 1e-5)
        self.linear_proj = cfg.get("use_linear_projection", False)

    def lin(self, x, p, bias=True):
        return F.linear(x, self.W[p + ".weight"], self.W.get(p + ".bias") if bias else None)

    def conv(self, x, p, stride=1, padding=1):
        return F.conv2d(x, self.W[p + ".weight"], self.W[p + ".bias"], stride=stride, padding=padding)

    # Under autocast the norms see bf16 activations and fp32 weights, which torch 1.13's CPU
    # group_norm refuses: they compute in the weights' dtype (fp32), as newer autocast does.
    def gn(self, x, p, eps):
        w = self.W[p + ".weight"]
        return F.group_norm(x.to(w.dtype), self.groups, w, self.W[p + ".bias"], eps)

    def ln(self, x, p):
        w = self.W[p + ".weight"]
        return F.layer_norm(x.to(w.dtype), x.shape[-1:], w, self.W[p + ".bias"], 1e-5)

    def resnet(self, x, temb, p):
        h = self.conv(F.silu(self.gn(x, p + ".norm1", self.eps)), p + ".conv1")
        h = h + self.lin(F.silu(temb), p + ".time_emb_proj")[:, :, None, None]
        h = self.conv(F.silu(self.gn(h, p + ".norm2", self.eps)), p + ".conv2")
        if p + ".conv_shortcut.weight" in self.W:
            x = self.conv(x, p + ".conv_shortcut", padding=0)
        return x + h

    def attention(self, x, ctx, p, heads):
        q = self.lin(x, p + ".to_q", False)
        k = self.lin(ctx, p + ".to_k", False)
        v = self.lin(ctx, p + ".to_v", False)
        B, Lq, D = q.shape
        Lk, dh = k.shape[1], D // heads

        def h2b(t):
            return t.reshape(B, -1, heads, dh).permute(0, 2, 1, 3).reshape(B * heads, -1, dh)
        q, k, v = h2b(q), h2b(k), h2b(v)
        s = torch.baddbmm(torch.empty(B * heads, Lq, Lk, dtype=q.dtype), q, k.transpose(-1, -2), beta=0,
                          alpha=dh ** -0.5)
        o = torch.bmm(s.softmax(dim=-1), v)
        o = o.reshape(B, heads, Lq, dh).permute(0, 2, 1, 3).reshape(B, Lq, D)
        return self.lin(o, p + ".to_out.0")

    def transformer(self, x, ctx, p, heads, depth):
        B, C, H, Wd = x.shape
        res = x
        h = self.gn(x, p + ".norm", 1e-6)
        if self.linear_proj:
            h = self.lin(h.permute(0, 2, 3, 1).reshape(B, H * Wd, C), p + ".proj_in")
        else:
            h = self.conv(h, p + ".proj_in", padding=0)
            h = h.permute(0, 2, 3, 1).reshape(B, H * Wd, -1)
        for i in range(depth):
            b = "%s.transformer_blocks.%d" % (p, i)
            n = self.ln(h, b + ".norm1")
            h = self.attention(n, n, b + ".attn1", heads) + h
            h = self.attention(self.ln(h, b + ".norm2"), ctx, b + ".attn2", heads) + h
            a, gate = self.lin(self.ln(h, b + ".norm3"), b + ".ff.net.0.proj").chunk(2, dim=-1)
            h = self.lin(a * F.gelu(gate), b + ".ff.net.2") + h
        if self.linear_proj:
            h = self.lin(h, p + ".proj_out").reshape(B, H, Wd, C).permute(0, 3, 1, 2).contiguous()
        else:
            h = h.reshape(B, H, Wd, -1).permute(0, 3, 1, 2).contiguous()
            h = self.conv(h, p + ".proj_out", padding=0)
        return h + res

    @staticmethod
    def timestep_embedding(t, dim, flip=True, shift=0.0):
        half = dim // 2
        exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32) / (half - shift)
        e = t[:, None].float() * torch.exp(exponent)[None, :]
        e = torch.cat([torch.sin(e), torch.cos(e)], dim=-1)
        if flip:
            e = torch.cat([e[:, half:], e[:, :half]], dim=-1)
        return e

    def forward(self, x, t, ctx, text_embeds=None, time_ids=None):
        c, W = self.c, self.W
        boc = c["block_out_channels"]
        flip, shift = c.get("flip_sin_to_cos", True), float(c.get("freq_shift", 0))
        dt = self.W["conv_in.weight"].dtype
        temb = self.timestep_embedding(t, boc[0], flip, shift).to(dt)
        temb = self.lin(F.silu(self.lin(temb, "time_embedding.linear_1")), "time_embedding.linear_2")
        if c.get("addition_embed_type") == "text_time":
            te = self.timestep_embedding(time_ids.flatten(), c["addition_time_embed_dim"], flip, shift)
            add = torch.cat([text_embeds, te.reshape(x.shape[0], -1).to(text_embeds.dtype)], dim=-1)
            temb = temb + self.lin(F.silu(self.lin(add, "add_embedding.linear_1")), "add_embedding.linear_2")
        h = self.conv(x, "conv_in")
        skips = [h]
        for i, typ in enumerate(c["down_block_types"]):
            for j in range(self.layers[i]):
                h = self.resnet(h, temb, "down_blocks.%d.resnets.%d" % (i, j))
                if typ == "CrossAttnDownBlock2D":
                    h = self.transformer(h, ctx, "down_blocks.%d.attentions.%d" % (i, j), self.heads[i], self.depth[i])
                skips.append(h)
            if i < self.nb - 1:
                h = self.conv(h, "down_blocks.%d.downsamplers.0.conv" % i, stride=2)
                skips.append(h)
        h = self.resnet(h, temb, "mid_block.resnets.0")
        h = self.transformer(h, ctx, "mid_block.attentions.0", self.heads[-1], self.depth[-1])
        h = self.resnet(h, temb, "mid_block.resnets.1")
        for i, typ in enumerate(c["up_block_types"]):
            r = self.nb - 1 - i
            for j in range(self.layers[r] + 1):
                h = torch.cat([h, skips.pop()], dim=1)
                h = self.resnet(h, temb, "up_blocks.%d.resnets.%d" % (i, j))
                if typ == "CrossAttnUpBlock2D":
                    h = self.transformer(h, ctx, "up_blocks.%d.attentions.%d" % (i, j), self.heads[r], self.depth[r])
            if i < self.nb - 1:
                h = F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest")
                h = self.conv(h, "up_blocks.%d.upsamplers.0.conv" % i)
        h = F.silu(self.gn(h, "conv_norm_out", self.eps))
        return self.conv(h, "conv_out")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("unet_dir")
    ap.add_argument("io")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--bf16-mode", choices=["cast", "autocast"], default="cast")
    ap.add_argument("--tol", type=float, default=None)
    a = ap.parse_args()
    if a.tol is None:
        a.tol = 1e-3 if a.dtype == "fp32" else 5e-2
    torch.set_num_threads(a.threads)
    cfg = json.load(open(a.unet_dir + "/config.json"))
    t0 = time.perf_counter()
    W = load_safetensors(a.unet_dir + "/diffusion_pytorch_model.safetensors")
    cast = a.dtype == "bf16" and a.bf16_mode == "cast"
    if cast:
        W = {k: v.to(torch.bfloat16) for k, v in W.items()}
    mode = "fp32" if a.dtype == "fp32" else "bf16 (%s)" % a.bf16_mode
    print("torch %s, %d threads, %s; loaded %d tensors in %.1f s" % (
        torch.__version__, torch.get_num_threads(), mode, len(W), time.perf_counter() - t0), flush=True)
    io = load_safetensors(a.io)
    m = UNet(cfg, W)
    args = [io["x"], io["timestep"], io["context"], io.get("text_embeds"), io.get("time_ids")]
    if cast:   # timestep and time_ids stay fp32: their embeddings compute in fp32, then cast
        args = [v.to(torch.bfloat16) if v is not None and i not in (1, 4) else v for i, v in enumerate(args)]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.dtype == "bf16" and a.bf16_mode == "autocast")
    with torch.inference_mode(), autocast:
        for _ in range(a.warmup):
            t0 = time.perf_counter()
            m.forward(*args)
            print("warm-up %.3f s" % (time.perf_counter() - t0), flush=True)
        ts = []
        for _ in range(a.steps):
            wait_idle()
            b0, s0 = machine_busy(), self_cpu()
            t0 = time.perf_counter()
            out = m.forward(*args)
            ts.append(time.perf_counter() - t0)
            others = max(0.0, (machine_busy() - b0) - (self_cpu() - s0)) / (ts[-1] * os.cpu_count())
            print("step %.3f s (other processes: %.0f%% of the CPUs)" % (ts[-1], 100 * others), flush=True)
    ref = io["out"]
    out = out.float()
    rel = float((out - ref).norm() / ref.norm())
    print("torch whole-UNet forward, %s: %.3f s/step (best of %d, %d warm-up); rel L2 vs qdiff output %.2e "
          "(tol %g)" % (mode, min(ts), len(ts), a.warmup, rel, a.tol))
    return 0 if rel < a.tol else 1


if __name__ == "__main__":
    sys.exit(main())
