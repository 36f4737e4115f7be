#!/usr/bin/env bash
# qdiff inspect: the table and --json on the fixture folders, and bad input (exit
# status 2 with a message naming the file at fault). The counts themselves are
# checked against the files in test_inspect.c.
# usage: cli_inspect.sh path/to/qdiff path/to/tests/fixtures
set -u
qdiff=$1
fixtures=$2
. "$(dirname "$0")/tools/cli_common.sh"
# good NAME WANT... -- ARGS: exit 0, stdout holds every WANT line fragment
good() {
  local name=$1; shift
  local wants=()
  while [[ $1 != -- ]]; do wants+=("$1"); shift; done
  shift
  "$qdiff" "$@" >"$tmp/stdout" 2>"$tmp/stderr"
  local rc=$? missing=""
  for w in "${wants[@]}"; do grep -qF -- "$w" "$tmp/stdout" || missing+="[$w] "; done
  if [[ $rc -eq 0 && -z "$missing" ]] && clean; then ok "$name"
  else bad "$name: rc=$rc missing: $missing stderr: $(head -c 600 "$tmp/stderr")"; fi
}

m=$fixtures/models
good "sd15 uint4+SVD table" "unet" "UNet2DConditionModel" "uint4 row-wise" "int8 row-wise: 18" "SVD: rank 8: 129 layers" \
  "skipped (modules_to_not_convert): 151 layers" "(no weights)" "total" -- inspect "$m/sd15-tiny-sdnq-uint4-svd"
good "flux int8-qmm table" "int8 row-wise: 50" "uint4 g16: 14" "quantized matmul (per the config): 50 layers" \
  -- inspect "$m/flux-tiny-sdnq-int8-qmm"
good "dense table" "f16 dense: 201" -- inspect "$m/sd15-tiny"
good "component folder" "UNet2DConditionModel" "uint4 g128" -- inspect "$m/sd15-tiny-sdnq-uint4-svd/unet"
good "--json" '"components"' '"layer_types"' '"uint4 row-wise"' '"svd_ranks"' -- inspect --json "$m/sd15-tiny-sdnq-uint4-svd"
if command -v python3 >/dev/null; then
  "$qdiff" inspect "$m/flux-tiny-sdnq-int8-qmm" --json >"$tmp/out.json" 2>"$tmp/stderr"
  if python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["totals"]["parameters"] > 0' "$tmp/out.json"; then
    ok "--json parses"
  else
    bad "--json parses: $(head -c 300 "$tmp/out.json")"
  fi
fi
good "--help" "usage: qdiff inspect" -- inspect --help

# a fresh copy of the quantized SD1.5 folder to break
fresh() { rm -rf "$tmp/m"; cp -r "$m/sd15-tiny-sdnq-uint4-svd" "$tmp/m"; }

expect "missing folder" "$tmp/nope" -- inspect "$tmp/nope"
expect "no DIR" "expected one folder" -- inspect
expect "two DIRs" "expected one folder" -- inspect "$m/sd15-tiny" "$m/sd15-tiny"
expect "unknown option" "--frob" -- inspect --frob "$m/sd15-tiny"

fresh; printf '{"_class_name": "StableDiffusionPipeline", ' >"$tmp/m/model_index.json"
expect "invalid model_index.json" "$tmp/m/model_index.json" -- inspect "$tmp/m"

fresh; printf '{"quant_method": "sdnq", "weights_dtype": ' >"$tmp/m/unet/quantization_config.json"
expect "invalid quantization_config.json" "$tmp/m/unet/quantization_config.json" -- inspect "$tmp/m"

fresh; printf '{"_class_name": ' >"$tmp/m/vae/config.json"
expect "invalid component config.json" "$tmp/m/vae/config.json" -- inspect "$tmp/m"

fresh; sed -i 's/"weights_dtype": "uint4"/"weights_dtype": "uint99"/' "$tmp/m/unet/quantization_config.json"
expect "unknown weights_dtype" "$tmp/m/unet/quantization_config.json" -- inspect "$tmp/m"
expect "unknown weights_dtype names the dtype" "uint99" -- inspect "$tmp/m"

fresh; rm -rf "$tmp/m/vae"
expect "missing component folder" "$tmp/m/vae" -- inspect "$tmp/m"

fresh; truncate -s 5000 "$tmp/m/unet/diffusion_pytorch_model.safetensors"
expect "truncated safetensors" "$tmp/m/unet/diffusion_pytorch_model.safetensors" -- inspect "$tmp/m"

fresh; rm "$tmp/m/unet/quantization_config.json"; sed -i 's/"quant_method": "sdnq"/"quant_method": "other"/' "$tmp/m/unet/config.json"
expect "SDNQ tensors without an SDNQ config" "no SDNQ quantization_config" -- inspect "$tmp/m"

finish
