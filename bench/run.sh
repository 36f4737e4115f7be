#!/usr/bin/env bash
# The UNet benchmark, end to end (not run by ctest or CI: it takes ~30 minutes and
# writes ~7 GB of random weights to /tmp):
#
#   bench/run.sh [sd15|sdxl|all]            (default all)
#
# 1. installs python3-torch, python3-numpy and libopenblas0-pthread if missing,
#    builds (cmake -B build -DCMAKE_BUILD_TYPE=Release),
# 2. measures the machine's fp32 FMA peak (bench_peak),
# 3. SD1.5 (latent 64x64, batch 2): bench_unet (1 warm-up + 3 timed steps), the same
#    op shapes in PyTorch with OpenBLAS and with the reference BLAS (linear and
#    attention only: conv goes through oneDNN either way), and a whole-UNet forward
#    in plain PyTorch checked against qdiff's output (bench/torch_unet.py),
# 4. SDXL (latent 128x128, batch 2): bench_unet (no warm-up, 1 timed step: a forward
#    takes ~2 minutes), its op shapes in PyTorch with OpenBLAS, and (QD_BENCH_SDXL_TORCH_UNET=1)
#    the whole-UNet PyTorch forward,
#    (bench_unet adds up to 2 steps when other processes disturbed every step; the
#    fastest step is reported),
# 5. prints the report and leaves it with every log and trace in $QD_BENCH_OUT
#    (default /tmp/qd_bench); QD_BENCH_APPEND=1 also appends it to bench/RESULTS.md.
#
# Weights are deleted afterwards unless QD_BENCH_KEEP=1. Each timed run first waits
# (up to 10 minutes) for the machine to be idle, and every result says how much CPU
# other processes took while it ran.
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:-all}
OUT=${QD_BENCH_OUT:-/tmp/qd_bench}
PY=/usr/bin/python3
LIB=/usr/lib/x86_64-linux-gnu
mkdir -p "$OUT"
REPORT=$OUT/report.md

need=()
$PY -c 'import torch, numpy' 2>/dev/null || need+=(python3-torch python3-numpy)
[ -e $LIB/openblas-pthread/libblas.so.3 ] || need+=(libopenblas0-pthread)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target bench_unet bench_peak

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
    local t=0 b
    while b=$(busy_cpus); [ "$b" -gt 20 ]; do
        [ $t -eq 0 ] && echo "waiting for the machine to be idle (busy: $b% of a CPU)..."
        t=$((t + 2))
        if [ $t -ge 600 ]; then echo "WARNING: machine still busy ($b% of a CPU); timing anyway"; return; fi
    done
}

{
    echo "## Run of $(date -u '+%Y-%m-%d %H:%M UTC'), qdiff $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo
    echo "- CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs, $(grep -m1 'cpu MHz' /proc/cpuinfo | sed 's/.*: //') MHz (cpuinfo)"
    echo "- flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|f16c|avx512f|avx512bw|avx512vl|avx512_bf16|avx512_vnni|avx_vnni)$' | tr '\n' ' ')"
    echo "- RAM: $(free -g | awk '/Mem:/ {print $2}') GiB; kernel $(uname -r)"
} > "$REPORT"

wait_idle
./build/bench_peak | tee "$OUT/peak.txt"
PEAK=$(sed -n 's/^peak_gflops //p' "$OUT/peak.txt")
echo "- measured fp32 FMA peak (bench_peak): $(grep 'avx512' "$OUT/peak.txt" || true)" >> "$REPORT"
echo >> "$REPORT"

summary() {   # the headline lines of a bench_unet log
    grep -E '^(parameters|s/step|FLOPs|GFLOP/s|peak RSS|output|contention|conv2d|linear|attention|other) ' "$1" | sed 's/^/    /'
}

run_model() {   # name config latent warmup steps
    local name=$1 cfg=$2 latent=$3 warmup=$4 steps=$5
    local dir=/tmp/qd_bench_$name
    wait_idle
    local cmd="./build/bench_unet --config $cfg --latent $latent --batch 2 --warmup $warmup --steps $steps --dir $dir --trace $OUT/${name}_trace.json --save $OUT/${name}_io.safetensors --keep"
    echo "\$ $cmd"
    $cmd | tee "$OUT/${name}_qdiff.txt"
    {
        echo "### $name: qdiff"
        echo
        echo "\`$cmd\`"
        echo
        summary "$OUT/${name}_qdiff.txt"
        echo
    } >> "$REPORT"

    wait_idle
    echo "\$ torch_ops.py (OpenBLAS) $OUT/${name}_trace.json"
    torch_openblas $PY bench/torch_ops.py "$OUT/${name}_trace.json" --threads 2 --peak-gflops "$PEAK" \
        --label "$name, torch + OpenBLAS (pthread), OPENBLAS_CORETYPE/L2_SIZE unset" --md "$REPORT" \
        --json "$OUT/${name}_torch_openblas.json" | tee "$OUT/${name}_torch_openblas.txt"
    if [ "$name" = sd15 ] && [ "${QD_BENCH_REFBLAS:-1}" = 1 ]; then
        wait_idle
        echo "\$ torch_ops.py (reference BLAS, linear + attention) $OUT/${name}_trace.json"
        torch_refblas $PY bench/torch_ops.py "$OUT/${name}_trace.json" --threads 2 --ops linear,attention \
            --peak-gflops "$PEAK" --label "$name, torch + Debian's default reference BLAS (libblas3)" --md "$REPORT" \
            --json "$OUT/${name}_torch_refblas.json" | tee "$OUT/${name}_torch_refblas.txt"
    fi
    if [ "$name" = sd15 ] || [ "${QD_BENCH_SDXL_TORCH_UNET:-0}" = 1 ]; then
        wait_idle
        echo "\$ torch_unet.py $dir"
        torch_openblas $PY bench/torch_unet.py "$dir" "$OUT/${name}_io.safetensors" --threads 2 \
            --warmup "$warmup" --steps "$steps" | tee "$OUT/${name}_torch_unet.txt" || true
        { echo "### $name: whole UNet forward in plain PyTorch (bench/torch_unet.py, OpenBLAS)"; echo;
          sed 's/^/    /' "$OUT/${name}_torch_unet.txt"; echo; } >> "$REPORT"
    fi
    [ "${QD_BENCH_KEEP:-0}" = 1 ] || rm -f "$dir/diffusion_pytorch_model.safetensors"
}

case $WHAT in
    sd15|all) run_model sd15 bench/configs/sd15_unet.json 64 1 3 ;;&
    sdxl|all) run_model sdxl bench/configs/sdxl_unet.json 128 0 1 ;;
    sd15) ;;
    *) echo "usage: bench/run.sh [sd15|sdxl|all]" >&2; exit 2 ;;
esac

echo
cat "$REPORT"
if [ "${QD_BENCH_APPEND:-0}" = 1 ]; then cat "$REPORT" >> bench/RESULTS.md; fi
