#!/usr/bin/env bash
# generate --precision: fp32 (the default) and an explicit fp32 give the same latents bit
# for bit; bf16 runs and its latents stay close to fp32's (relative L2 < 5e-2, the bound
# of test_pipeline_bf16) without being identical where the CPU has AVX512_BF16; a bad
# value fails with exit 2 and no output.
# usage: cli_precision.sh path/to/qdiff path/to/tests/fixtures
set -u
qdiff=$1
fx=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0
ok() { echo "ok   $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }

run() {   # name, extra args...
  local name=$1
  shift
  "$qdiff" generate -m "$fx/models/sd15-tiny" -p "a cat" --steps 3 --seed 7 -q -o "$tmp/$name.png" \
    --save-latents "$tmp/$name.safetensors" "$@" 2>"$tmp/$name.err"
}

run default && run fp32 --precision fp32 && run bf16 --precision bf16 && run auto --precision auto
if [[ $? -eq 0 && -s "$tmp/default.png" && -s "$tmp/bf16.png" && -s "$tmp/auto.png" ]]; then ok "fp32, bf16 and auto runs"
else bad "runs: $(cat "$tmp"/*.err)"; fi

if cmp -s "$tmp/default.safetensors" "$tmp/fp32.safetensors"; then ok "default is fp32: identical latents"
else bad "default and --precision fp32 differ"; fi

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
  fi
fi

"$qdiff" generate -m "$fx/models/sd15-tiny" -p "a cat" --steps 2 -q -o "$tmp/x.png" --precision fp16 2>"$tmp/err"
if [[ $? -eq 2 && ! -e "$tmp/x.png" ]] && grep -q "precision" "$tmp/err"; then ok "--precision fp16 refused: $(cat "$tmp/err")"
else bad "--precision fp16: $(cat "$tmp/err")"; fi

echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]]
