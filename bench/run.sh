#!/usr/bin/env bash
# Every benchmark of issue 9 in one go, one report (not run by ctest or CI: about 30-40
# minutes on 2 cores, ~1.7 GB of random SD1.5 weights in /tmp, deleted at the end):
#
#   bench/run.sh            SD1.5: everything below
#   bench/run.sh all        also SDXL (latent 128x128: qdiff fp32/bf16, torch ops; +15 min)
#
# 1. installs python3-torch, python3-numpy and libopenblas0-pthread if missing, builds the
#    benchmarks (cmake -B $QD_BENCH_BUILD, default build, Release),
# 2. the machine's peaks: fp32 FMA and bf16 vdpbf16ps (bench_peak),
# 3. kernels on the real layer shapes of SD1.5/SDXL/FLUX.1, % of those peaks: dense GEMM
#    and convolution fp32 + bf16 (bench_gemm), int8 GEMM (bench_int8_gemm), attention
#    fp32 + bf16 (bench_attention),
# 4. one whole SD1.5 512x512 CFG step (UNet forward, latent 64x64, batch 2, fp16 weights),
#    qdiff fp32 and bf16 (bench_unet: 1 warm-up, best of 2-3 timed steps, op traces),
# 5. PyTorch 1.13 (Debian python3-torch, OpenBLAS, 2 threads) side by side: every op
#    shape of those traces (bench/torch_ops.py, fp32 and bf16) and the whole UNet forward
#    (bench/torch_unet.py) in fp32 and in bf16, both ways torch 1.13 offers (weights cast
#    to bf16, and autocast: the faster one is the ratio); each checked against qdiff's
#    output (fp32 rel L2 < 1e-3, bf16 < 5e-2),
# 6. VAE decode 512x512 fp32 + bf16, qdiff and PyTorch (bench_vae, bench/torch_vae.py),
#    when this checkout has them (the hook below),
# 7. the report: $QD_BENCH_OUT/report.md (default /tmp/qd_bench, with every log and
#    trace), the headline ratios first; QD_BENCH_APPEND=1 also appends it to
#    bench/RESULTS.md.
#
# The machine may be shared: every timed run first waits (up to 10 minutes) for it to be
# idle, and every result says how much CPU other processes took while it ran.
# QD_BENCH_TORCH_OPS=0 skips the per-op PyTorch tables (the longest part, ~10 min);
# QD_BENCH_REFBLAS=1 adds them with Debian's reference BLAS; QD_BENCH_KEEP=1 keeps the weights.
# Two threads against one on every kernel (issue 9 item 5) is bench/scaling.py, run on its own.
# QD_BENCH_SMOKE=1 checks the script itself in a few minutes: the fixture's tiny UNet
# instead of SD1.5's, one short rep of everything, no idle waits (its numbers mean nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:-sd15}
case $WHAT in sd15|all) ;; *) echo "usage: bench/run.sh [sd15|all]" >&2; exit 2 ;; esac
OUT=${QD_BENCH_OUT:-/tmp/qd_bench}
BUILD=${QD_BENCH_BUILD:-build}
PY=/usr/bin/python3
LIB=/usr/lib/x86_64-linux-gnu
SMOKE=${QD_BENCH_SMOKE:-0}
UNET_CFG=bench/configs/sd15_unet.json UNET_LATENT=64
PEAK_ARGS=() GEMM_ARGS=(--reps 3 --min-seconds 0.25) INT8_ARGS=(--shapes all) ATTN_ARGS=() OPS_ARGS=() VAE_ARGS=(--latent 64)
if [ "$SMOKE" = 1 ]; then
    OUT=${QD_BENCH_OUT:-/tmp/qd_bench_smoke}
    UNET_CFG=tests/fixtures/models/sd15-tiny/unet/config.json UNET_LATENT=16
    PEAK_ARGS=(--seconds 0.05 --idle-wait 0) GEMM_ARGS=(--reps 1 --min-seconds 0.01 --filter M128) INT8_ARGS=(--reps 1 --shapes sd15 --idle-wait 0)
    ATTN_ARGS=(--reps 1) OPS_ARGS=(--reps 1) VAE_ARGS=(--latent 8 --idle-wait 0)
    export QD_BENCH_IDLE_WAIT=0   # torch_ops.py / torch_unet.py
fi
mkdir -p "$OUT"
REPORT=$OUT/report.md
BODY=$OUT/report_body.md

need=()
$PY -c 'import torch, numpy' 2>/dev/null || need+=(python3-torch python3-numpy)
[ -e $LIB/openblas-pthread/libblas.so.3 ] || need+=(libopenblas0-pthread)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
HAVE_VAE=0
[ -f bench/bench_vae.c ] && [ -f bench/torch_vae.py ] && HAVE_VAE=1
targets=(bench_peak bench_gemm bench_int8_gemm bench_attention bench_unet)
[ $HAVE_VAE = 1 ] && targets+=(bench_vae)
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" -j"$(nproc)" --target "${targets[@]}"

# torch with a chosen BLAS; the OPENBLAS_CORETYPE/L2_SIZE overrides some machines set
# make OpenBLAS pick slower kernels, so they are dropped for these commands only.
torch_openblas() { env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE LD_LIBRARY_PATH=$LIB/openblas-pthread "$@"; }
torch_refblas() { env LD_LIBRARY_PATH=$LIB/blas:$LIB/lapack "$@"; }

busy_cpus() {   # CPUs' worth of busy time over the next 2 s, x100
    local a b
    a=($(head -1 /proc/stat)); sleep 2; b=($(head -1 /proc/stat))
    local busy=$(( (b[1]+b[2]+b[3]+b[6]+b[7]+b[8]) - (a[1]+a[2]+a[3]+a[6]+a[7]+a[8]) ))
    echo $(( busy * 100 / ($(getconf CLK_TCK) * 2) ))
}
wait_idle() {
    [ "$SMOKE" = 1 ] && return
    local t=0 b
    while b=$(busy_cpus); [ "$b" -gt 20 ]; do
        [ $t -eq 0 ] && echo "waiting for the machine to be idle (busy: $b% of a CPU)..."
        t=$((t + 2))
        if [ $t -ge 600 ]; then echo "WARNING: machine still busy ($b% of a CPU); timing anyway"; return; fi
    done
}
log() { echo "\$ $*"; }
section() { { echo "### $1"; echo; } >> "$BODY"; }
cmdline() { { echo '```sh'; echo "$*"; echo '```'; echo; } >> "$BODY"; }
verbatim() { { sed 's/^/    /' "$1"; echo; } >> "$BODY"; }
run() {   # name, command...: run it (after waiting for idle), keep its log, put both in the report
    local name=$1
    shift
    wait_idle
    log "$@"
    "$@" 2>&1 | tee "$OUT/$name.txt"
    cmdline "$*"
    verbatim "$OUT/$name.txt"
}
unet_summary() {   # the headline lines of a bench_unet log
    grep -E '^(parameters|s/step|FLOPs|GFLOP/s|peak RSS|output|contention|conv2d|linear|attention|other) ' "$1" | sed 's/^/    /'
}
num() { sed -n "$2" "$1" | head -1; }   # first match of a sed -n script in a file

{
    echo "## bench/run.sh $WHAT: $(date -u '+%Y-%m-%d %H:%M UTC'), qdiff $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
    echo
    [ "$SMOKE" = 1 ] && { echo "**QD_BENCH_SMOKE=1: a check of the script (tiny fixture UNet instead of SD1.5, one short rep, no idle waits): the numbers mean nothing.**"; echo; }
    echo "- CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs, $(grep -m1 'cpu MHz' /proc/cpuinfo | sed 's/.*: //') MHz (cpuinfo)"
    echo "- flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|f16c|avx512f|avx512bw|avx512vl|avx512_bf16|avx512_vnni|avx_vnni)$' | tr '\n' ' ')"
    echo "- RAM: $(free -g | awk '/Mem:/ {print $2}') GiB; kernel $(uname -r); torch $($PY -c 'import torch; print(torch.__version__)')"
    echo "- load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$OUT/header.md"
: > "$BODY"

# ---- 2. peaks ----
section "Peaks (bench_peak)"
run peak "$BUILD/bench_peak" "${PEAK_ARGS[@]}"
PEAK=$(num "$OUT/peak.txt" 's/^peak_gflops //p')
PEAK16=$(num "$OUT/peak.txt" 's/^peak_bf16_gflops //p')

# ---- 3. kernels ----
section "Dense GEMM and convolution, fp32 and bf16, 1 and 2 threads (bench_gemm)"
run gemm "$BUILD/bench_gemm" "${GEMM_ARGS[@]}"
section "int8 GEMM (bench_int8_gemm)"
run int8_gemm "$BUILD/bench_int8_gemm" "${INT8_ARGS[@]}"
section "Attention, fp32 and bf16 (bench_attention)"
run attention "$BUILD/bench_attention" "${ATTN_ARGS[@]}"

# ---- 4./5. whole UNet step, qdiff and PyTorch ----
unet_model() {   # name config latent warmup steps
    local name=$1 cfg=$2 latent=$3 warmup=$4 steps=$5
    local dir=/tmp/qd_bench_$name reuse=() p
    [ "$SMOKE" = 1 ] && dir=/tmp/qd_bench_smoke_$name
    for p in fp32 bf16; do
        wait_idle
        local cmd=("$BUILD/bench_unet" --config "$cfg" --latent "$latent" --batch 2 --warmup "$warmup" --steps "$steps"
                   --precision $p --dir "$dir" --trace "$OUT/${name}_${p}_trace.json"
                   --save "$OUT/${name}_${p}_io.safetensors" --keep "${reuse[@]}")
        [ "$SMOKE" = 1 ] && cmd+=(--idle-wait 0)
        log "${cmd[@]}"
        "${cmd[@]}" | tee "$OUT/${name}_qdiff_$p.txt"
        section "$name: qdiff UNet step, $p"
        cmdline "${cmd[*]}"
        unet_summary "$OUT/${name}_qdiff_$p.txt" >> "$BODY"
        echo >> "$BODY"
        reuse=(--reuse)
    done
    if [ "${QD_BENCH_TORCH_OPS:-1}" = 1 ]; then
        for p in fp32 bf16; do
            local pk=$PEAK
            [ $p = bf16 ] && pk=$PEAK16
            wait_idle
            log "torch_ops.py --dtype $p (OpenBLAS) $OUT/${name}_${p}_trace.json"
            torch_openblas $PY bench/torch_ops.py "$OUT/${name}_${p}_trace.json" --threads 2 --dtype $p --peak-gflops "$pk" "${OPS_ARGS[@]}" \
                --label "$name $p, torch + OpenBLAS (pthread), OPENBLAS_CORETYPE/L2_SIZE unset" --md "$BODY" \
                --json "$OUT/${name}_torch_ops_$p.json" | tee "$OUT/${name}_torch_ops_$p.txt"
        done
        if [ "$name" = sd15 ] && [ "${QD_BENCH_REFBLAS:-0}" = 1 ]; then
            wait_idle
            torch_refblas $PY bench/torch_ops.py "$OUT/${name}_fp32_trace.json" --threads 2 --ops linear,attention \
                --peak-gflops "$PEAK" --label "$name fp32, torch + Debian's default reference BLAS (libblas3)" \
                --md "$BODY" --json "$OUT/${name}_torch_refblas.json" | tee "$OUT/${name}_torch_refblas.txt"
        fi
    fi
    if [ "$name" = sd15 ] || [ "${QD_BENCH_SDXL_TORCH_UNET:-0}" = 1 ]; then
        # the whole forward: checked against qdiff's fp32 output (bf16: within 5e-2)
        local mode
        for mode in "fp32" "bf16 autocast" "bf16 cast"; do
            set -- $mode
            local args=(--dtype "$1")
            [ $# -gt 1 ] && args+=(--bf16-mode "$2")
            local tag=${mode// /_}
            wait_idle
            log torch_unet.py "$dir" "${args[@]}"
            torch_openblas $PY bench/torch_unet.py "$dir" "$OUT/${name}_fp32_io.safetensors" --threads 2 \
                --warmup "$warmup" --steps "$steps" "${args[@]}" | tee "$OUT/${name}_torch_unet_$tag.txt" || true
            section "$name: whole UNet forward in plain PyTorch, $mode (bench/torch_unet.py, OpenBLAS)"
            cmdline "/usr/bin/python3 bench/torch_unet.py $dir $OUT/${name}_fp32_io.safetensors --threads 2 --warmup $warmup --steps $steps ${args[*]}"
            verbatim "$OUT/${name}_torch_unet_$tag.txt"
        done
    fi
    [ "${QD_BENCH_KEEP:-0}" = 1 ] || rm -f "$dir/diffusion_pytorch_model.safetensors"
}
unet_model sd15 "$UNET_CFG" "$UNET_LATENT" 1 2

# ---- 6. VAE decode --------------------------------------------------------------------
# HOOK (speed-vae): bench/bench_vae.c + bench/torch_vae.py, run when both are in this
# checkout. The options are those of their headers (bench_vae --latent --precision --save
# --keep/--reuse; torch_vae.py VAE_DIR IO --precision fp32,bf16); adjust here if they change.
if [ $HAVE_VAE = 1 ]; then
    vdir=/tmp/qd_bench_vae
    [ "$SMOKE" = 1 ] && vdir=/tmp/qd_bench_smoke_vae
    reuse=()
    for p in fp32 bf16; do
        section "SD1.5 VAE decode 512x512: qdiff $p (bench_vae)"
        run vae_qdiff_$p "$BUILD/bench_vae" "${VAE_ARGS[@]}" --precision $p --dir $vdir --steps 2 \
            --save "$OUT/vae_${p}_io.safetensors" --keep "${reuse[@]}"
        reuse=(--reuse)
    done
    section "SD1.5 VAE decode 512x512: PyTorch fp32 and bf16 (bench/torch_vae.py, OpenBLAS)"
    run vae_torch torch_openblas $PY bench/torch_vae.py $vdir "$OUT/vae_fp32_io.safetensors" --threads 2 --steps 2 \
        --precision fp32,bf16 || true
    [ "${QD_BENCH_KEEP:-0}" = 1 ] || rm -f $vdir/diffusion_pytorch_model.safetensors
else
    { echo "### VAE decode"; echo; echo "not measured: bench/bench_vae.c and bench/torch_vae.py are not in this checkout"; echo; } >> "$BODY"
fi

if [ "$WHAT" = all ]; then
    unet_model sdxl bench/configs/sdxl_unet.json 128 0 1
fi

# ---- 7. headline ratios, then everything ----------------------------------------------
q32=$(num "$OUT/sd15_qdiff_fp32.txt" 's/^s\/step *\([0-9.]*\).*/\1/p')
q16=$(num "$OUT/sd15_qdiff_bf16.txt" 's/^s\/step *\([0-9.]*\).*/\1/p')
tsec() { [ -f "$1" ] && num "$1" 's/.*: \([0-9.]*\) s\/step.*/\1/p' || true; }
t32=$(tsec "$OUT/sd15_torch_unet_fp32.txt")
t16a=$(tsec "$OUT/sd15_torch_unet_bf16_autocast.txt")
t16c=$(tsec "$OUT/sd15_torch_unet_bf16_cast.txt")
t16=$(printf '%s\n' $t16a $t16c | sort -g | head -1)
ratio() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }' || echo "?"; }
{
    cat "$OUT/header.md"
    echo "- measured peaks (bench_peak, 2 threads): fp32 FMA ${PEAK:-?} GFLOP/s, bf16 ${PEAK16:-?} GFLOP/s"
    echo
    echo "Whole SD1.5 512x512 CFG step (UNet forward, batch 2), seconds (best of the timed steps):"
    echo
    echo "| | fp32 | bf16 |"
    echo "|---|---:|---:|"
    echo "| qdiff | ${q32:-?} | ${q16:-?} |"
    echo "| PyTorch 1.13 (bf16: the faster of autocast ${t16a:-?} / cast ${t16c:-?}) | ${t32:-?} | ${t16:-?} |"
    echo "| **PyTorch / qdiff** | **$(ratio "$t32" "$q32")** | **$(ratio "$t16" "$q16")** |"
    echo
    echo "Other processes' share of the CPUs during each timed run is in the logs below (\"other"
    echo "processes\", \"contention\")."
    echo
    cat "$BODY"
} > "$REPORT"
echo
cat "$REPORT"
if [ "${QD_BENCH_APPEND:-0}" = 1 ]; then { echo; cat "$REPORT"; } >> bench/RESULTS.md; fi
