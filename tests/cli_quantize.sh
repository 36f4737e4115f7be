#!/usr/bin/env bash
# qdiff quantize from the command line: a run whose output loads (qdiff inspect),
# the dry-run table and --json, --help, and bad input: exit status 2 with a message
# naming the problem, and never an output folder or a leftover OUT.tmp-* folder.
# The quantized tensors themselves are checked in test_sdnq_quantize.c and
# test_quantize_models.c.
# usage: cli_quantize.sh path/to/qdiff path/to/tests/fixtures
set -u
qdiff=$1
fixtures=$(realpath "$2")
. "$(dirname "$0")/tools/cli_common.sh"
m=$fixtures/models


# --help
if "$qdiff" quantize --help >"$tmp/stdout" 2>"$tmp/stderr" && grep -q -- "--weights-dtype" "$tmp/stdout" &&
   grep -q -- "--dry-run" "$tmp/stdout" && grep -q -- "--layer-config" "$tmp/stdout"; then ok "--help"; else bad "--help"; fi

# a real run: the folder loads and says what it holds
if "$qdiff" quantize "$m/sd15-tiny" "$tmp/good" -q --weights-dtype uint4 --svd-rank 8 --min-numel 0 --min-channels 16 \
     --no-default-skips >"$tmp/stdout" 2>"$tmp/stderr" && clean &&
   "$qdiff" inspect "$tmp/good" >"$tmp/inspect" 2>>"$tmp/stderr" && grep -q "uint4 row-wise" "$tmp/inspect" &&
   grep -q "SVD: rank 8: 129 layers" "$tmp/inspect" && ! ls -d "$tmp"/good.tmp-* >/dev/null 2>&1 &&
   [[ $(stat -c %i "$tmp/good/vae/diffusion_pytorch_model.safetensors") == $(stat -c %i "$m/sd15-tiny/vae/diffusion_pytorch_model.safetensors") ||
      -f "$tmp/good/vae/diffusion_pytorch_model.safetensors" ]] &&
   cmp -s "$tmp/good/vae/diffusion_pytorch_model.safetensors" "$m/sd15-tiny/vae/diffusion_pytorch_model.safetensors" &&
   cmp -s "$tmp/good/model_index.json" "$m/sd15-tiny/model_index.json"; then
  ok "uint4+SVD folder written, inspect reads it, vae and model_index unchanged"
else
  bad "real run: $(head -c 600 "$tmp/stderr")"
fi

# default skip lists: UNet2DConditionModel skips the time embedding (".time_embed" prefix)
if "$qdiff" quantize "$m/sd15-tiny" --dry-run --min-numel 0 --min-channels 16 >"$tmp/stdout" 2>"$tmp/stderr" &&
   grep -q "time_embedding.linear_1.weight.*default skip list of UNet2DConditionModel" "$tmp/stdout" &&
   grep -q "^total: quantized" "$tmp/stdout" && grep -q "rel err" "$tmp/stdout"; then
  ok "dry-run table (per layer, default skips, totals)"
else
  bad "dry-run table: $(head -c 600 "$tmp/stdout") $(head -c 300 "$tmp/stderr")"
fi
if "$qdiff" quantize "$m/flux-tiny" --dry-run --json --weights-dtype int8 >"$tmp/stdout" 2>"$tmp/stderr" &&
   python3 -c "
import json,sys
r=json.load(open(sys.argv[1]))
c=r['components'][0]
assert c['name']=='transformer' and r['dry_run'] is True
assert all('skipped' in l or (l['dtype']=='int8' and l['rel_error']>0) for l in c['layers'])
assert any('default skip list of FluxTransformer2DModel' in l.get('skipped','') for l in c['layers'])
" "$tmp/stdout" && no_leftovers; then
  ok "dry-run --json (flux transformer, FLUX skip list)"
else
  bad "dry-run --json: $(head -c 600 "$tmp/stderr")"
fi

expect "unknown dtype" "unknown weights dtype 'int99'; valid types: int2..int7" -- quantize "$m/sd15-tiny" "$tmp/out" --weights-dtype int99
expect "bad group size" "group size -5 is not valid" -- quantize "$m/sd15-tiny" "$tmp/out" --group-size -5
expect "group size not a number" "--group-size expects an integer" -- quantize "$m/sd15-tiny" "$tmp/out" --group-size x
expect "skip pattern matching nothing" "--skip pattern 'no_such_block' matches no layer weight" -- quantize "$m/sd15-tiny" "$tmp/out" --skip no_such_block
expect "dtype-for without =" "is not PATTERN=TYPE" -- quantize "$m/sd15-tiny" "$tmp/out" --dtype-for to_q
expect "dtype-for bad type" "unknown weights dtype in override 'uint77'" -- quantize "$m/sd15-tiny" "$tmp/out" --dtype-for to_q=uint77
expect "dtype-for pattern matching nothing" "--dtype-for pattern 'zz*' matches no layer" -- quantize "$m/sd15-tiny" "$tmp/out" --dtype-for 'zz*=int8'
expect "codebook needs uint" "a codebook needs an unsigned integer weights dtype" -- quantize "$m/sd15-tiny" "$tmp/out" --codebook --weights-dtype int4
expect "missing folder" "$tmp/nothing: no such folder" -- quantize "$tmp/nothing" "$tmp/out"
expect "component folder is not a pipeline" "not a diffusers folder (no model_index.json)" -- quantize "$m/sd15-tiny/unet" "$tmp/out"
expect "unknown component" "no component 'transformer' in this pipeline" -- quantize "$m/sd15-tiny" "$tmp/out" --components transformer
expect "already quantized" "already quantized" -- quantize "$m/sd15-tiny-sdnq-uint4-svd" "$tmp/out" --components unet
mkdir -p "$tmp/in2" && cp -r "$m/sd15-tiny/." "$tmp/in2/"
"$qdiff" quantize "$tmp/in2" "$tmp/in2/out" -q >"$tmp/stdout" 2>"$tmp/stderr"
rc=$?
if [[ $rc -eq 2 ]] && grep -qF "may not be inside the input folder" "$tmp/stderr" && ! ls -d "$tmp"/in2/out* >/dev/null 2>&1; then
  ok "output inside the input refused: $(head -c 200 "$tmp/stderr")"
else
  bad "output inside the input: rc=$rc $(head -c 300 "$tmp/stderr")"
fi
rm -rf "$tmp/in2"
expect "no output folder" "needs IN and OUT" -- quantize "$m/sd15-tiny"
expect "unknown option" "unknown option '--frobnicate'" -- quantize "$m/sd15-tiny" "$tmp/out" --frobnicate
printf '{"components":{"unet":{"layers":{"conv_in.weight":{"weight_dtype":"int8"}}}}}' >"$tmp/bad_layers.json"
expect "bad layer config" "unknown key 'weight_dtype'" -- quantize "$m/sd15-tiny" "$tmp/out" --layer-config "$tmp/bad_layers.json"
printf '{"components":{"unet":{"layers":{"conv_in.weight":{"skip":1}}}}}' >"$tmp/bad_layers2.json"
expect "bad layer config value" "skip must be true or false" -- quantize "$m/sd15-tiny" "$tmp/out" --layer-config "$tmp/bad_layers2.json"

# an existing output is refused without --force and left as it was
mkdir -p "$tmp/out_existing" && echo keep >"$tmp/out_existing/marker"
"$qdiff" quantize "$m/sd15-tiny" "$tmp/out_existing" -q >"$tmp/stdout" 2>"$tmp/stderr"
rc=$?
if [[ $rc -eq 2 ]] && grep -qF "already exists (use --force to replace it)" "$tmp/stderr" && [[ -f "$tmp/out_existing/marker" ]] &&
   ! ls -d "$tmp"/out_existing.tmp-* >/dev/null 2>&1; then
  ok "existing output refused: $(head -c 200 "$tmp/stderr")"
else
  bad "existing output: rc=$rc $(head -c 300 "$tmp/stderr")"
fi
if "$qdiff" quantize "$m/sd15-tiny" "$tmp/out_existing" -q --force >"$tmp/stdout" 2>"$tmp/stderr" &&
   [[ ! -e "$tmp/out_existing/marker" && -f "$tmp/out_existing/unet/quantization_config.json" ]] &&
   ! ls -d "$tmp"/out_existing.* >/dev/null 2>&1; then
  ok "--force replaces it"
else
  bad "--force: $(head -c 300 "$tmp/stderr")"
fi
rm -rf "$tmp/out_existing"

# a failure after the denoiser was written (a dangling link in another component):
# error, and the half-built folder is gone
mkdir -p "$tmp/in"
for d in "$m/sd15-tiny"/*; do ln -s "$d" "$tmp/in/$(basename "$d")"; done
rm "$tmp/in/vae" && mkdir "$tmp/in/vae" && ln -s "$tmp/does-not-exist" "$tmp/in/vae/broken.safetensors"
expect "failure mid-run leaves nothing" "broken.safetensors: No such file" -- quantize "$tmp/in" "$tmp/out" -q

finish
