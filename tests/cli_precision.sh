#!/usr/bin/env bash
# generate --precision: auto (the default) gives the same latents bit for bit as bf16
# where the CPU has AVX512_BF16 and as fp32 elsewhere; $QD_PRECISION sets the default
# (an explicit --precision wins); bf16 runs and its latents stay close to fp32's
# (relative L2 < 5e-2, the bound of test_pipeline_bf16) without being identical where
# the CPU has AVX512_BF16; a bad value (option or environment) fails with exit 2 and no
# output. qdiff vae and serve take the same option.
# usage: cli_precision.sh path/to/qdiff path/to/tests/fixtures
set -u
qdiff=$1
fx=$2
. "$(dirname "$0")/tools/cli_common.sh"

run() {   # name, extra args...
  local name=$1
  shift
  "$qdiff" generate -m "$fx/models/sd15-tiny" -p "a cat" --steps 3 --seed 7 -q -o "$tmp/$name.png" \
    --save-latents "$tmp/$name.safetensors" "$@" 2>"$tmp/$name.err"
}

unset QD_PRECISION
run default && run fp32 --precision fp32 && run bf16 --precision bf16 && run auto --precision auto &&
  QD_PRECISION=fp32 run env_fp32 && QD_PRECISION=fp32 run env_fp32_opt_bf16 --precision bf16
if [[ $? -eq 0 && -s "$tmp/default.png" && -s "$tmp/bf16.png" && -s "$tmp/auto.png" ]]; then ok "fp32, bf16 and auto runs"
else bad "runs: $(cat "$tmp"/*.err)"; fi

if cmp -s "$tmp/default.safetensors" "$tmp/auto.safetensors"; then ok "default is auto: identical latents"
else bad "default and --precision auto differ"; fi
if cmp -s "$tmp/env_fp32.safetensors" "$tmp/fp32.safetensors"; then ok "QD_PRECISION=fp32: the fp32 latents"
else bad "QD_PRECISION=fp32 differs from --precision fp32"; fi
if cmp -s "$tmp/env_fp32_opt_bf16.safetensors" "$tmp/bf16.safetensors"; then ok "--precision bf16 wins over QD_PRECISION=fp32"
else bad "--precision bf16 with QD_PRECISION=fp32 differs from bf16"; fi

# relative L2 of the latents (little-endian F32 payload after the safetensors header)
rel() {
  python3 - "$1" "$2" <<'PY'
import json, struct, sys, math
def load(p):
    b = open(p, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]
    h = json.loads(b[8:8 + n]); t = h['latents']; s, e = t['data_offsets']
    d = b[8 + n + s: 8 + n + e]; return struct.unpack('<%df' % (len(d) // 4), d)
a, r = load(sys.argv[1]), load(sys.argv[2])
print('%.3g' % (math.sqrt(sum((x - y) ** 2 for x, y in zip(a, r)) / sum(y * y for y in r))))
PY
}
if command -v python3 >/dev/null; then
  r=$(rel "$tmp/bf16.safetensors" "$tmp/fp32.safetensors")
  if grep -q avx512_bf16 /proc/cpuinfo; then
    if awk -v r="$r" 'BEGIN { exit !(r > 1e-6 && r < 5e-2) }'; then ok "bf16 latents within rel L2 $r of fp32 (bound 5e-2, and not identical)"
    else bad "bf16 latents rel L2 $r (want 1e-6 < r < 5e-2)"; fi
    if cmp -s "$tmp/auto.safetensors" "$tmp/bf16.safetensors"; then ok "auto = bf16 on this CPU"
    else bad "auto differs from bf16 on a CPU with AVX512_BF16"; fi
  else
    if cmp -s "$tmp/bf16.safetensors" "$tmp/fp32.safetensors"; then ok "no AVX512_BF16: bf16 runs as fp32"
    else bad "no AVX512_BF16 but bf16 differs from fp32"; fi
    if cmp -s "$tmp/auto.safetensors" "$tmp/fp32.safetensors"; then ok "no AVX512_BF16: auto runs as fp32"
    else bad "no AVX512_BF16 but auto differs from fp32"; fi
  fi
fi
if grep -q avx512_bf16 /proc/cpuinfo; then want=bf16; else want=fp32; fi
"$qdiff" generate -m "$fx/models/sd15-tiny" -p "a cat" --steps 1 -o "$tmp/v.png" 2>"$tmp/err"
if grep -q "(seed [0-9]*, $want)" "$tmp/err"; then ok "generate says what it ran in: $(grep wrote "$tmp/err")"
else bad "generate's message lacks the precision $want: $(cat "$tmp/err")"; fi

"$qdiff" generate -m "$fx/models/sd15-tiny" -p "a cat" --steps 2 -q -o "$tmp/x.png" --precision fp16 2>"$tmp/err"
if [[ $? -eq 2 && ! -e "$tmp/x.png" ]] && grep -q "precision" "$tmp/err"; then ok "--precision fp16 refused: $(cat "$tmp/err")"
else bad "--precision fp16: $(cat "$tmp/err")"; fi

QD_PRECISION=fp16 "$qdiff" generate -m "$fx/models/sd15-tiny" -p "a cat" --steps 2 -q -o "$tmp/y.png" 2>"$tmp/err"
if [[ $? -eq 2 && ! -e "$tmp/y.png" ]] && grep -q "QD_PRECISION" "$tmp/err"; then ok "QD_PRECISION=fp16 refused: $(cat "$tmp/err")"
else bad "QD_PRECISION=fp16: $(cat "$tmp/err")"; fi

# qdiff vae: the sd15-tiny VAE decode in fp32 and bf16 (close, and different where bf16 runs)
"$qdiff" vae decode --vae "$fx/models/sd15-tiny/vae" -i "$tmp/fp32.safetensors" -o "$tmp/vae32.png" -q --precision fp32 &&
  "$qdiff" vae decode --vae "$fx/models/sd15-tiny/vae" -i "$tmp/fp32.safetensors" -o "$tmp/vae16.png" -q --precision bf16
if [[ $? -eq 0 && -s "$tmp/vae32.png" && -s "$tmp/vae16.png" ]]; then ok "vae decode --precision fp32 and bf16"
else bad "vae decode --precision"; fi
"$qdiff" vae decode --vae "$fx/models/sd15-tiny/vae" -i "$tmp/fp32.safetensors" -o "$tmp/vaex.png" --precision half 2>"$tmp/err"
if [[ $? -eq 2 && ! -e "$tmp/vaex.png" ]] && grep -q "precision" "$tmp/err"; then ok "vae --precision half refused"
else bad "vae --precision half: $(cat "$tmp/err")"; fi
if "$qdiff" serve --help | grep -q -- "--precision"; then ok "serve --help lists --precision"; else bad "serve --help lacks --precision"; fi
"$qdiff" serve -m "$fx/models/sd15-tiny" --port 0 --precision fp8 2>"$tmp/err"
if [[ $? -eq 2 ]] && grep -q "precision" "$tmp/err"; then ok "serve --precision fp8 refused: $(cat "$tmp/err")"
else bad "serve --precision fp8: $(cat "$tmp/err")"; fi

# serve: the precision each model runs in, from --precision or $QD_PRECISION, in its "ready" line
serve_ready() {   # log file, serve args...: start, wait (<= 60 s) for the model, stop; the ready line
  local log=$1 pid t
  shift
  "$qdiff" serve -m "$fx/models/sd15-tiny" --port 0 "$@" 2>"$log" &
  pid=$!
  for t in $(seq 120); do grep -q "ready (" "$log" && break; sleep 0.5; done
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  grep "ready (" "$log"
}
r=$(serve_ready "$tmp/serve1.log" --precision fp32)
if [[ "$r" == *"(sd15, fp32,"* ]]; then ok "serve --precision fp32: $r"; else bad "serve --precision fp32: $(cat "$tmp/serve1.log")"; fi
r=$(QD_PRECISION=bf16 serve_ready "$tmp/serve2.log")
if [[ "$r" == *"(sd15, $want,"* ]]; then ok "serve with QD_PRECISION=bf16 runs $want here: $r"
else bad "serve QD_PRECISION=bf16: $(cat "$tmp/serve2.log")"; fi

finish
