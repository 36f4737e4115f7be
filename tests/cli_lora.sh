#!/usr/bin/env bash
# Generation-time LoRA (qdiff generate --lora) against an independent merge: tests/tools/
# lora_reference.py makes random LoRAs for sd15-tiny (kohya names with .alpha, linear, 1x1 and
# 3x3 conv, text encoder; PEFT names with adapter_config.json lora_alpha/r/rank_pattern; for
# flux-tiny a kohya LoRA with BFL names, fused qkv/linear1; for sdxl-tiny a kohya LoRA with the
# original LDM UNet names on every UNet layer, merged at generation and at quantize time) and
# writes the folder a merge gives, W' = W + scale * alpha/r * up @ down, computed in numpy
# (float64, stored float32). `generate --lora` on the base must equal `generate` on that folder
# within fp32 rounding: final latents rel L2 <= 1e-5 and max abs <= 1e-3 (measured ~2e-6 and
# ~6e-5), PNG pixels within +-1. Also an SDNQ int8 base (qdiff quantize, unet + text encoder,
# convs too) + LoRA against the reference merged into its dequantized weights (int8 * scale)
# with --matmul exact (same bounds); --matmul int8 only within rel L2 0.2 of that reference
# (the int8 activation rounding is discontinuous: on this tiny random model a 1e-5 change of
# one LoRA scale moves the int8 result by 5%; without the LoRA it is 0.47 away). Scale 0 and
# no --lora give exactly today's latents; LoRA errors exit 2 with no output file.
# usage: cli_lora.sh path/to/qdiff path/to/tests/fixtures
set -u
qdiff=$1
fx=$2
export QD_PRECISION=fp32   # the bounds below are fp32 rounding
py=${QD_PYTHON:-/usr/bin/python3}
tool=$(cd "$(dirname "$0")" && pwd)/tools/lora_reference.py
. "$(dirname "$0")/tools/cli_common.sh"
model=$fx/models/sd15-tiny

if ! "$py" -c "import numpy" 2>"$tmp/err"; then
  bad "python3-numpy is needed (scripts/install-deps.sh): $(cat "$tmp/err")"
  finish
  exit 1
fi

gen() {   # gen NAME MODEL [extra args...]: PNG + latents into $tmp/NAME.*
  local name=$1 m=$2
  shift 2
  "$qdiff" generate -m "$m" -p "a red circle on a blue background" -n "blurry" --steps 4 --seed 7 -q \
    -o "$tmp/$name.png" --save-latents "$tmp/$name.st" "$@" 2>"$tmp/$name.err"
}

# compare A B MAX_REL MAX_ABS PIXELS: latents (rel L2, max abs) and PNG pixels (max |diff|)
compare() {
  "$py" - "$tmp/$1" "$tmp/$2" "$3" "$4" "$5" <<'EOF'
import sys, json, struct, zlib
import numpy as np
def latents(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n)); d = f.read()
    t = h["latents"]; a, b = t["data_offsets"]
    return np.frombuffer(d[a:b], dtype=np.float32)
def pixels(path):
    from PIL import Image
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int32)
a, b = sys.argv[1], sys.argv[2]
la, lb = latents(a + ".st"), latents(b + ".st")
rel = float(np.linalg.norm(la - lb) / np.linalg.norm(lb)); mx = float(np.abs(la - lb).max())
if sys.argv[5] == "-":
    px = -1
else:
    px = int(np.abs(pixels(a + ".png") - pixels(b + ".png")).max())
good = rel <= float(sys.argv[3]) and mx <= float(sys.argv[4]) and (sys.argv[5] == "-" or px <= int(sys.argv[5]))
print("rel L2 %.3g (<= %s), max abs %.3g (<= %s), max pixel diff %d (<= %s)" % (rel, sys.argv[3], mx, sys.argv[4], px, sys.argv[5]))
sys.exit(0 if good else 1)
EOF
}

check() {   # check WHAT A B MAX_REL MAX_ABS PIXELS
  local what=$1
  shift
  local out
  out=$(compare "$@" 2>&1)
  if [[ $? -eq 0 ]]; then ok "$what: $out"; else bad "$what: $out"; fi
}

"$py" "$tool" make "$model" "$tmp/loras" || bad "lora_reference.py make"
gen base "$model" || bad "base generate: $(cat "$tmp/base.err")"

# kohya (unet linear/conv 1x1/conv 3x3 + text encoder)
"$py" "$tool" merge "$model" "$tmp/ref_k" "$tmp/loras/kohya.safetensors:0.8" || bad "merge kohya"
if gen lora_k "$model" --lora "$tmp/loras/kohya.safetensors:0.8" && gen ref_k "$tmp/ref_k"; then
  check "kohya LoRA at generation time == generate on the numpy-merged folder" lora_k ref_k 1e-5 1e-3 1
  out=$(compare base ref_k 0.05 100 -)
  if [[ $? -ne 0 ]]; then ok "base differs from the LoRA result ($out)"; else bad "the LoRA has no effect: $out"; fi
  grep -q "LoRA: kohya:0.8" <(strings "$tmp/lora_k.png") && ok "PNG parameters name the LoRA" ||
    bad "PNG parameters lack 'LoRA: kohya:0.8'"
else bad "kohya generate: $(cat "$tmp/lora_k.err" "$tmp/ref_k.err" 2>/dev/null)"; fi

# PEFT (adapter_config.json: lora_alpha 6, r 4, rank_pattern to_k: 2)
"$py" "$tool" merge "$model" "$tmp/ref_p" "$tmp/loras/peft/adapter_model.safetensors:1.2" || bad "merge peft"
if gen lora_p "$model" --lora "$tmp/loras/peft/adapter_model.safetensors:1.2" && gen ref_p "$tmp/ref_p"; then
  check "PEFT LoRA (alpha from adapter_config.json) == numpy-merged folder" lora_p ref_p 1e-5 1e-3 1
else bad "peft generate: $(cat "$tmp/lora_p.err" "$tmp/ref_p.err" 2>/dev/null)"; fi

# both at once, one negative
"$py" "$tool" merge "$model" "$tmp/ref_kp" "$tmp/loras/kohya.safetensors:0.7" \
  "$tmp/loras/peft/adapter_model.safetensors:-0.5" || bad "merge both"
if gen lora_kp "$model" --lora "$tmp/loras/kohya.safetensors:0.7" --lora "$tmp/loras/peft/adapter_model.safetensors:-0.5" &&
   gen ref_kp "$tmp/ref_kp"; then
  check "two LoRAs (0.7 and -0.5) == numpy-merged folder" lora_kp ref_kp 1e-5 1e-3 1
else bad "two LoRAs: $(cat "$tmp/lora_kp.err" 2>/dev/null)"; fi

# FLUX: a kohya LoRA with BFL names (fused img/txt qkv, linear1, txt_mlp.0, final adaLN) on the
# diffusers flux-tiny (bf16), against numpy splitting each fused up over to_q/to_k/to_v/proj_mlp
flux=$fx/models/flux-tiny
genf() {
  local name=$1 m=$2
  shift 2
  "$qdiff" generate -m "$m" -p "a cat on a mat" --steps 2 -W 64 -H 64 --seed 3 -q -o "$tmp/$name.png" \
    --save-latents "$tmp/$name.st" "$@" 2>"$tmp/$name.err"
}
if "$py" "$tool" make-flux "$flux" "$tmp/loras" && "$py" "$tool" merge-flux "$flux" "$tmp/ref_f" "$tmp/loras/flux_bfl.safetensors:0.9"; then
  if genf lora_f "$flux" --lora "$tmp/loras/flux_bfl.safetensors:0.9" && genf ref_f "$tmp/ref_f" && genf base_f "$flux"; then
    check "FLUX: BFL fused qkv/linear1 LoRA split over diffusers to_q/to_k/to_v/proj_mlp == numpy merge" lora_f ref_f 1e-5 1e-3 1
    out=$(compare base_f ref_f 0.05 100 -)
    if [[ $? -ne 0 ]]; then ok "FLUX: the LoRA changes the result ($out)"; else bad "FLUX LoRA has no effect: $out"; fi
  else bad "FLUX generate: $(cat "$tmp/lora_f.err" "$tmp/ref_f.err" 2>/dev/null)"; fi
else bad "lora_reference.py make-flux / merge-flux"; fi

# SDXL kohya LoRA with the ORIGINAL (LDM) UNet names (lora_unet_input_blocks_4_1_..., _op, _2_conv,
# time_embed_0, label_emb_0_0, out_2: every matrix/conv of sdxl-tiny's UNet) + lora_te1_/lora_te2_
# layers; the numpy reference finds each layer by make_single_file.py's diffusers -> LDM map
sdxl=$fx/models/sdxl-tiny
if "$py" "$tool" make-sdxl "$sdxl" "$tmp/loras" &&
   "$py" "$tool" merge "$sdxl" "$tmp/ref_x" "$tmp/loras/sdxl_kohya_ldm.safetensors:0.6"; then
  if gen lora_x "$sdxl" --lora "$tmp/loras/sdxl_kohya_ldm.safetensors:0.6" && gen ref_x "$tmp/ref_x" && gen base_x "$sdxl"; then
    ! grep -q "matched" "$tmp/lora_x.err" && ok "SDXL kohya LDM names: no unmatched layer" ||
      bad "SDXL kohya LDM names: $(cat "$tmp/lora_x.err")"
    check "SDXL: kohya LoRA with LDM names at generation time == numpy-merged folder" lora_x ref_x 1e-5 1e-3 1
    out=$(compare base_x ref_x 0.05 100 -)
    if [[ $? -ne 0 ]]; then ok "SDXL: the LoRA changes the result ($out)"; else bad "SDXL LoRA has no effect: $out"; fi
  else bad "SDXL generate: $(cat "$tmp/lora_x.err" "$tmp/ref_x.err" "$tmp/base_x.err" 2>/dev/null)"; fi
  # merged at quantize time: every layer matched, and the int8 result near the int8 quantization of the
  # numpy-merged folder (which keeps its unquantized layers in fp32, the merge keeps fp16: ~7e-4 apart)
  qx="--weights-dtype int8 --components unet,text_encoder,text_encoder_2"
  if "$qdiff" quantize "$sdxl" "$tmp/qx" $qx --merge-lora "$tmp/loras/sdxl_kohya_ldm.safetensors:0.6" >"$tmp/qx.log" 2>&1 &&
     "$qdiff" quantize "$tmp/ref_x" "$tmp/qx_ref" $qx >"$tmp/qx_ref.log" 2>&1; then
    n=$(grep -c "layers matched a weight" "$tmp/qx.log")
    grep -q "^LoRA: 266 of 266 layers matched a weight" "$tmp/qx.log" && [[ $n -eq 1 ]] &&
      ok "quantize --merge-lora (SDXL kohya LDM names): $(grep "^LoRA:" "$tmp/qx.log")" ||
      bad "quantize --merge-lora SDXL: $(cat "$tmp/qx.log")"
    if gen lora_qx "$tmp/qx" --matmul exact && gen ref_qx "$tmp/qx_ref" --matmul exact; then
      check "SDXL: quantize --merge-lora == quantize of the numpy-merged folder" lora_qx ref_qx 5e-3 0.1 -
    else bad "SDXL quantized generate: $(cat "$tmp/lora_qx.err" "$tmp/ref_qx.err" 2>/dev/null)"; fi
  else bad "SDXL quantize --merge-lora: $(cat "$tmp/qx.log" "$tmp/qx_ref.log" 2>/dev/null)"; fi
else bad "lora_reference.py make-sdxl / merge"; fi

# scale 0 and no LoRA: today's latents, bit for bit
gen zero "$model" --lora "$tmp/loras/kohya.safetensors:0" || bad "scale 0: $(cat "$tmp/zero.err")"
cmp -s "$tmp/zero.st" "$tmp/base.st" && ok "scale 0: latents identical to no LoRA" || bad "scale 0 changed the latents"

# SDNQ int8 base (every unet and text encoder layer, convs too) + LoRA
if "$qdiff" quantize "$model" "$tmp/q" --weights-dtype int8 --group-size -1 --min-numel 0 --min-channels 0 \
     --quant-conv --components unet,text_encoder >"$tmp/q.log" 2>&1; then
  "$py" "$tool" merge "$tmp/q" "$tmp/ref_q" "$tmp/loras/kohya.safetensors:0.8" || bad "merge into SDNQ"
  if gen lora_q "$tmp/q" --lora "$tmp/loras/kohya.safetensors:0.8" --matmul exact &&
     gen ref_q "$tmp/ref_q" --matmul exact; then
    check "SDNQ int8 base + LoRA (exact) == LoRA merged into the dequantized weights" lora_q ref_q 1e-5 1e-3 1
  else bad "SDNQ + LoRA: $(cat "$tmp/lora_q.err" "$tmp/ref_q.err" 2>/dev/null)"; fi
  if gen lora_q8 "$tmp/q" --lora "$tmp/loras/kohya.safetensors:0.8" --matmul int8 && gen q8 "$tmp/q" --matmul int8; then
    check "SDNQ + LoRA with --matmul int8: near the merged reference" lora_q8 ref_q 0.2 100 -
    out=$(compare q8 ref_q 0.2 100 -)
    if [[ $? -ne 0 ]]; then ok "(int8 without the LoRA is not: $out)"; else bad "int8 without LoRA as close: $out"; fi
  else bad "SDNQ int8 + LoRA: $(cat "$tmp/lora_q8.err" 2>/dev/null)"; fi
else bad "quantize: $(cat "$tmp/q.log")"; fi

# SDNQ int8 in sdnq's quantized-matmul layout ([in, out] codes, decoded k-major straight into
# the GEMM's panels): the LoRA delta must still be added (exact, fp32: same bounds), and in bf16
# precision the LoRA run stays within the sd15-tiny bf16 bound (5e-2, measured 1.6e-2) of the merged reference, while the
# same bf16 run without the LoRA is not.
if "$qdiff" quantize "$model" "$tmp/qm" --weights-dtype int8 --group-size -1 --min-numel 0 --min-channels 0 \
     --quantized-matmul --components unet,text_encoder >"$tmp/qm.log" 2>&1; then
  "$py" "$tool" merge "$tmp/qm" "$tmp/ref_qm" "$tmp/loras/kohya.safetensors:0.8" || bad "merge into SDNQ (qmm layout)"
  if gen lora_qm "$tmp/qm" --lora "$tmp/loras/kohya.safetensors:0.8" --matmul exact &&
     gen ref_qm "$tmp/ref_qm" --matmul exact; then
    check "SDNQ int8 quantized-matmul layout + LoRA (exact) == the merged reference" lora_qm ref_qm 1e-5 1e-3 1
  else bad "SDNQ qmm + LoRA: $(cat "$tmp/lora_qm.err" "$tmp/ref_qm.err" 2>/dev/null)"; fi
  if gen lora_qmb "$tmp/qm" --lora "$tmp/loras/kohya.safetensors:0.8" --matmul exact --precision bf16 &&
     gen ref_qmb "$tmp/ref_qm" --matmul exact --precision bf16 && gen qmb "$tmp/qm" --matmul exact --precision bf16; then
    check "SDNQ qmm layout + LoRA in bf16: within bf16 rounding of the merged reference" lora_qmb ref_qmb 5e-2 100 -
    out=$(compare qmb ref_qmb 5e-2 100 -)
    if [[ $? -ne 0 ]]; then ok "(bf16 without the LoRA is not: $out)"; else bad "bf16 without LoRA as close: $out"; fi
  else bad "SDNQ qmm + LoRA bf16: $(cat "$tmp/lora_qmb.err" "$tmp/ref_qmb.err" "$tmp/qmb.err" 2>/dev/null)"; fi
else bad "quantize --quantized-matmul: $(cat "$tmp/qm.log")"; fi

# errors: exit 2, the file named, no output
gen nomatch "$model" --lora "$tmp/loras/nomatch.safetensors"
rc=$?
if [[ $rc -eq 2 && ! -e "$tmp/nomatch.png" ]] && grep -q "nomatch.safetensors: 0 of its 1 LoRA layers matched" "$tmp/nomatch.err"; then
  ok "a LoRA matching no layer: $(cat "$tmp/nomatch.err")"
else bad "no-match LoRA: rc=$rc $(cat "$tmp/nomatch.err")"; fi
gen missing "$model" --lora "$tmp/loras/missing.safetensors:0.5"
rc=$?
if [[ $rc -eq 2 && ! -e "$tmp/missing.png" ]] && grep -q "missing.safetensors" "$tmp/missing.err"; then
  ok "missing LoRA file named: $(cat "$tmp/missing.err")"
else bad "missing LoRA: rc=$rc $(cat "$tmp/missing.err")"; fi
gen two "$model" --lora "$tmp/loras/kohya.safetensors" --lora "$tmp/loras/nomatch.safetensors:1"
[[ $? -eq 2 && ! -e "$tmp/two.png" ]] && ok "one of two LoRAs matching nothing is still an error" ||
  bad "second LoRA unmatched accepted"
gen partial "$model" --lora "$tmp/loras/partial.safetensors"
rc=$?
if [[ $rc -eq 0 ]] && grep -q "partial.safetensors: 1 of 2 LoRA layers matched a weight; not applied" "$tmp/partial.err"; then
  ok "a partly matching LoRA runs with a warning: $(cat "$tmp/partial.err")"
else bad "partial LoRA: rc=$rc $(cat "$tmp/partial.err")"; fi
"$qdiff" generate -m "$model" -p x -q -o "$tmp/e.png" --lora ":0.5" 2>"$tmp/e.err"
[[ $? -eq 2 ]] && grep -q "FILE\[:SCALE\]" "$tmp/e.err" && ok "--lora without a file: $(cat "$tmp/e.err")" ||
  bad "--lora ':0.5': $(cat "$tmp/e.err")"
"$qdiff" generate --help | grep -q -- "--lora FILE\[:SCALE\]" && ok "generate --help lists --lora" ||
  bad "--help lacks --lora"

finish
