#!/usr/bin/python3
"""Time every conv / linear / attention shape of a qdiff UNet step in PyTorch.

    /usr/bin/python3 bench/torch_ops.py TRACE.json [--threads 2] [--reps 3] [--label TEXT]
                                        [--ops conv2d,linear,attention] [--json OUT.json] [--md OUT.md]
                                        [--dtype fp32|bf16]

TRACE.json is what `bench_unet --trace` writes: one record per op qdiff ran in the
timed step (op, dims, seconds). Shapes are de-duplicated (with their count), each is
run in PyTorch fp32 on --threads threads, and the median of --reps repetitions (after
one warm-up run) is compared with qdiff's time for the same shape. Reported: a table
per op type, the summed ratio (sum over ops of torch time x count / sum of qdiff
time; > 1 means qdiff is faster), the top shapes by qdiff time, and the fraction of
this CPU's nominal fp32 peak each side reaches. --dtype bf16 runs every op on bf16
tensors (oneDNN's AVX512_BF16 kernels where the CPU has them), the side-by-side of a
`bench_unet --precision bf16` trace; give it the measured bf16 peak (--peak-gflops).

What PyTorch runs for each op is what diffusers runs on torch 1.13:
  conv2d     F.conv2d(x, w, b, stride, padding) (asymmetric padding: F.pad first)
  linear     F.linear(x, w, b)
  attention  diffusers' AttnProcessor: head_to_batch_dim on q/k/v [B, L, heads*dh],
             torch.baddbmm(empty, q, k^T, beta=0, alpha=dh^-0.5), softmax, torch.bmm,
             batch_to_head_dim back to [B, Lq, heads*dh] (torch 1.13 has no
             F.scaled_dot_product_attention; on torch >= 2 that is timed instead)
The BLAS behind torch's linear/bmm is whatever libblas.so.3 resolves to: run this
with LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread (or .../blas for the
reference BLAS) to choose. Convolutions go through oneDNN (mkldnn) either way.
"""
import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def conv_flops(d):
    B, Cin, H, W, Cout, kh, kw, s, pt, pb, pl, pr = d
    Ho = (H + pt + pb - kh) // s + 1
    Wo = (W + pl + pr - kw) // s + 1
    return 2 * B * Cout * Ho * Wo * Cin * kh * kw


def flops(op, d):
    if op == "conv2d":
        return conv_flops(d)
    if op == "linear":
        return 2 * d[0] * d[1] * d[2]
    B, h, Lq, Lk, dh = d[:5]
    return 4 * B * h * Lq * Lk * dh


def describe(op, d):
    if op == "conv2d":
        B, Cin, H, W, Cout, kh, kw, s, pt, pb, pl, pr = d
        pad = "p%d" % pt if pt == pb == pl == pr else "p%d,%d,%d,%d" % (pt, pb, pl, pr)
        return "B%d %dx%dx%d -> %d k%dx%d s%d %s" % (B, Cin, H, W, Cout, kh, kw, s, pad)
    if op == "linear":
        return "M%d %d -> %d%s" % (d[0], d[1], d[2], "" if d[3] else " (no bias)")
    return "B%d heads%d Lq%d Lk%d dh%d%s" % (d[0], d[1], d[2], d[3], d[4], " causal" if d[5] else "")


DTYPE = torch.float32   # --dtype


def make_fn(op, d):
    """A closure that runs the op once in torch (inputs made up front, in DTYPE)."""
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g).to(DTYPE)
    if op == "conv2d":
        B, Cin, H, W, Cout, kh, kw, s, pt, pb, pl, pr = d
        x, w, b = rnd(B, Cin, H, W), rnd(Cout, Cin, kh, kw) * 0.02, rnd(Cout)
        if pt == pb == pl == pr:
            return lambda: F.conv2d(x, w, b, stride=s, padding=pt)
        return lambda: F.conv2d(F.pad(x, (pl, pr, pt, pb)), w, b, stride=s)
    if op == "linear":
        M, K, N, bias = d
        x, w = rnd(M, K), rnd(N, K) * 0.02
        b = rnd(N) if bias else None
        return lambda: F.linear(x, w, b)
    B, h, Lq, Lk, dh, causal = d
    q, k, v = rnd(B, Lq, h * dh), rnd(B, Lk, h * dh), rnd(B, Lk, h * dh)
    scale = dh ** -0.5
    if hasattr(F, "scaled_dot_product_attention"):
        def sdpa():
            qq, kk, vv = (t.view(B, -1, h, dh).transpose(1, 2) for t in (q, k, v))
            o = F.scaled_dot_product_attention(qq, kk, vv, is_causal=bool(causal))
            return o.transpose(1, 2).reshape(B, Lq, h * dh)
        return sdpa

    def head_to_batch(t):          # diffusers Attention.head_to_batch_dim
        L = t.shape[1]
        return t.reshape(B, L, h, dh).permute(0, 2, 1, 3).reshape(B * h, L, dh)

    mask = torch.full((Lq, Lk), float("-inf"), dtype=DTYPE).triu(1) if causal else None

    def attn_processor():          # diffusers AttnProcessor (torch < 2)
        qq, kk, vv = head_to_batch(q), head_to_batch(k), head_to_batch(v)
        base = torch.empty(B * h, Lq, Lk, dtype=DTYPE) if mask is None else mask.expand(B * h, Lq, Lk)
        s = torch.baddbmm(base, qq, kk.transpose(-1, -2), beta=0 if mask is None else 1, alpha=scale)
        p = s.softmax(dim=-1)
        o = torch.bmm(p, vv)
        return o.reshape(B, h, Lq, dh).permute(0, 2, 1, 3).reshape(B, Lq, h * dh)
    return attn_processor


def time_fn(fn, reps, slow):
    with torch.inference_mode():
        t0 = time.perf_counter()
        fn()                        # warm-up (oneDNN primitive creation, allocations)
        first = time.perf_counter() - t0
        if first > slow:            # very slow shapes (reference BLAS): one more run is enough
            reps = 1
        else:                       # fast shapes: enough runs for ~0.3 s, so the median is stable
            reps = max(reps, min(50, int(0.3 / max(first, 1e-6))))
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def machine_busy():
    """Busy CPU seconds of the whole machine (user nice system irq softirq steal)."""
    try:
        v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


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
        time.sleep(0.5)
        if machine_busy() - b0 < 0.1:
            return


def timed_clean(fn, reps, slow, tries=3):
    """time_fn, repeated (up to `tries`) while other processes took > 10% of the CPUs."""
    best = None
    for _ in range(tries):
        wait_idle()
        b0, s0, w0 = machine_busy(), self_cpu(), time.perf_counter()
        t = time_fn(fn, reps, slow)
        wall = time.perf_counter() - w0
        others = max(0.0, (machine_busy() - b0) - (self_cpu() - s0)) / (wall * os.cpu_count())
        if best is None or others < best[1]:
            best = (t, others)
        if others < 0.10:
            break
    return best


def cpu_peak():
    """Nominal fp32 peak: cores x GHz x FLOP/cycle (AVX-512: 2 FMA pipes x 16 lanes x 2)."""
    info = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            info[k.strip()] = v.strip()
    except OSError:
        pass
    cores = int(info.get("Core(s) per socket", "1")) * int(info.get("Socket(s)", "1"))
    mhz = None
    for key in ("CPU max MHz", "CPU MHz"):
        if info.get(key):
            mhz = float(info[key])
            break
    if mhz is None:
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("cpu MHz"):
                    mhz = float(line.split(":")[1])
                    break
        except OSError:
            pass
    flags = info.get("Flags", "")
    per_cycle = 64 if "avx512f" in flags.split() else 32 if "fma" in flags.split() else 8
    return cores, (mhz or 0) / 1000.0, per_cycle, info.get("Model name", "?")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--slow", type=float, default=5.0, help="warm-up seconds above which a shape gets one timed run")
    ap.add_argument("--ops", default="conv2d,linear,attention")
    ap.add_argument("--label", default="")
    ap.add_argument("--peak-gflops", type=float, default=0,
                    help="measured fp32 (with --dtype bf16: bf16) peak of the machine (bench_peak); reported "
                         "beside the nominal fp32 one")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--json", help="write per-shape results here")
    ap.add_argument("--md", help="append the markdown tables here")
    ap.add_argument("--render", metavar="RESULTS.json",
                    help="no timing: redo the tables from an earlier --json output (e.g. with another --peak-gflops)")
    a = ap.parse_args()
    global DTYPE
    DTYPE = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    peak_name = "bf16 (vdpbf16ps)" if a.dtype == "bf16" else "fp32 FMA"

    torch.set_num_threads(a.threads)
    tr = json.load(open(a.trace))
    wanted = a.ops.split(",")
    shapes = {}
    for r in tr["ops"]:
        if r["op"] not in wanted:
            continue
        key = (r["op"], tuple(r["dims"]))
        e = shapes.setdefault(key, {"count": 0, "qd": 0.0})
        e["count"] += 1
        e["qd"] += r["s"]

    blas = "?"
    cfg = torch.__config__.show()
    m = re.search(r"BLAS_INFO=(\w+)", cfg)
    if m:
        blas = m.group(1)
    libs = []   # every BLAS/LAPACK library mapped into this process
    try:
        for line in open("/proc/self/maps"):
            path = line.split()[-1]
            if ("blas" in path or "lapack" in path) and path not in libs:
                libs.append(path)
    except OSError:
        pass
    libblas = ", ".join(libs) or "?"
    cores, ghz, per_cycle, model = cpu_peak()
    peak = cores * ghz * per_cycle  # GFLOP/s, nominal
    mpeak = a.peak_gflops or peak   # measured, when given

    head = []
    head.append("torch %s, %s, %d threads, BLAS_INFO=%s, mapped BLAS/LAPACK: %s, mkldnn: %s" % (
        torch.__version__, a.dtype, torch.get_num_threads(), blas, libblas, torch.backends.mkldnn.is_available()))
    head.append("OPENBLAS_CORETYPE=%s OPENBLAS_L2_SIZE=%s" % (
        os.environ.get("OPENBLAS_CORETYPE", "(unset)"), os.environ.get("OPENBLAS_L2_SIZE", "(unset)")))
    head.append("trace: %s (%s, latent %s, batch %s, %s weights, qdiff step %.3f s (fastest), %d ops, %d shapes)" % (
        a.trace, tr.get("config"), tr.get("latent"), tr.get("batch"), tr.get("dtype"),
        tr.get("best_seconds", tr.get("step_seconds", 0)),
        len(tr["ops"]), len(shapes)))
    head.append("nominal fp32 peak: %d cores x %.2f GHz x %d FLOP/cycle = %.0f GFLOP/s (%s; GHz as lscpu/cpuinfo "
                "report it)" % (cores, ghz, per_cycle, peak, model))
    if a.peak_gflops:
        head.append("measured %s peak (bench_peak, all cores): %.0f GFLOP/s" % (peak_name, a.peak_gflops))
    for h in head:
        print(h, flush=True)

    if a.render:
        saved = json.load(open(a.render))
        results = saved["results"]
        head = [h for h in saved["head"] if not h.startswith("measured ")]
        head[0] = head[0] + " (re-rendered from %s)" % a.render
        if a.peak_gflops:
            head.append("measured %s peak (bench_peak, all cores): %.0f GFLOP/s" % (peak_name, a.peak_gflops))
    else:
        t_start = time.perf_counter()
        results = []
        for i, ((op, d), e) in enumerate(sorted(shapes.items(), key=lambda kv: -kv[1]["qd"])):
            fn = make_fn(op, list(d))
            t, others = timed_clean(fn, a.reps, a.slow)
            del fn
            res = {"op": op, "dims": list(d), "count": e["count"], "qd_s": e["qd"], "torch_s": t * e["count"],
                   "gflop": flops(op, d) * e["count"] / 1e9, "others_cpu": others}
            results.append(res)
            print("  [%3d/%d] %-9s %-40s x%-3d qdiff %8.4f s  torch %8.4f s  ratio %.2f%s" % (
                i + 1, len(shapes), op, describe(op, d), e["count"], e["qd"], t * e["count"],
                t * e["count"] / e["qd"] if e["qd"] > 0 else 0,
                "  (other processes: %.0f%% CPU)" % (100 * others) if others >= 0.10 else ""), flush=True)
        print("torch timing took %.0f s" % (time.perf_counter() - t_start))

    lines = []
    title = a.label or os.path.basename(a.trace)
    lines.append("### %s: per-op comparison with PyTorch" % title)
    lines.append("")
    lines += ["- " + h for h in head]
    lines.append("")
    tot_q = sum(r["qd_s"] for r in results)
    tot_t = sum(r["torch_s"] for r in results)
    tot_f = sum(r["gflop"] for r in results)
    lines.append("| op type | ops | shapes | GFLOP | qdiff s | torch s | torch/qdiff | qdiff GFLOP/s | torch GFLOP/s "
                 "| qdiff %% of %.0f | torch %% of %.0f | qdiff %% of %.0f | torch %% of %.0f |" % (peak, peak, mpeak, mpeak))
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for op in wanted + ["all"]:
        rs = results if op == "all" else [r for r in results if r["op"] == op]
        if not rs:
            continue
        q = sum(r["qd_s"] for r in rs)
        t = sum(r["torch_s"] for r in rs)
        f = sum(r["gflop"] for r in rs)
        n = sum(r["count"] for r in rs)
        name = "**all (summed ratio)**" if op == "all" else op
        lines.append("| %s | %d | %d | %.1f | %.3f | %.3f | **%.2f** | %.1f | %.1f | %.0f%% | %.0f%% | %.0f%% | %.0f%% |" % (
            name, n, len(rs), f, q, t, t / q, f / q, f / t, 100 * f / q / peak if peak else 0,
            100 * f / t / peak if peak else 0, 100 * f / q / mpeak if mpeak else 0,
            100 * f / t / mpeak if mpeak else 0))
    lines.append("")
    dirty = [r for r in results if r["others_cpu"] >= 0.10]
    lines.append("qdiff trace: other processes used %.0f%% of the CPUs during its step. torch: %d of %d shapes "
                 "timed while other processes used >= 10%% of the CPUs (after 3 tries)." % (
                     100 * tr.get("other_processes_cpu_fraction", 0), len(dirty), len(results)))
    lines.append("")
    lines.append("torch/qdiff > 1: qdiff is faster. Summed ratio over all ops: **%.2f** "
                 "(torch %.2f s vs qdiff %.2f s for the same %d ops)." % (
                     tot_t / tot_q, tot_t, tot_q, sum(r["count"] for r in results)))
    lines.append("")
    for op in wanted:
        rs = sorted((r for r in results if r["op"] == op), key=lambda r: -r["qd_s"])
        if not rs:
            continue
        lines.append("%s shapes (by qdiff time):" % op)
        lines.append("")
        lines.append("| shape | count | qdiff s | torch s | torch/qdiff | qdiff GFLOP/s | torch GFLOP/s | % of qdiff op time |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in rs:
            lines.append("| %s | %d | %.4f | %.4f | %.2f | %.1f | %.1f | %.1f%% |" % (
                describe(op, r["dims"]), r["count"], r["qd_s"], r["torch_s"], r["torch_s"] / r["qd_s"],
                r["gflop"] / r["qd_s"], r["gflop"] / r["torch_s"], 100 * r["qd_s"] / tot_q))
        lines.append("")
    step = tr.get("best_seconds", 0) or tr.get("step_seconds", 0) or tot_q
    lines.append("Top 5 op shapes by qdiff time (%% of the %.2f s step):" % step)
    lines.append("")
    lines.append("| # | op | shape | count | qdiff s | % of step | qdiff GFLOP/s | torch/qdiff |")
    lines.append("|---:|---|---|---:|---:|---:|---:|---:|")
    for i, r in enumerate(sorted(results, key=lambda r: -r["qd_s"])[:5]):
        lines.append("| %d | %s | %s | %d | %.3f | %.1f%% | %.1f | %.2f |" % (
            i + 1, r["op"], describe(r["op"], r["dims"]), r["count"], r["qd_s"], 100 * r["qd_s"] / step,
            r["gflop"] / r["qd_s"], r["torch_s"] / r["qd_s"]))
    lines.append("")
    text = "\n".join(lines)
    print()
    print(text)
    if a.md:
        with open(a.md, "a") as f:
            f.write(text + "\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"head": head, "peak_gflops": peak, "results": results}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
