#!/usr/bin/env bash
# The CLI on broken model folders and bad arguments: exit status 2, a message
# naming the file at fault, and no output file (nor temporary) left behind.
# usage: cli_bad_input.sh path/to/qdiff path/to/tests/fixtures
set -u
qdiff=$1
. "$(dirname "$0")/tools/cli_common.sh"
fixtures=$2

# a fresh copy of the tiny SD1.5 folder to break
fresh() { rm -rf "$tmp/m"; cp -r "$fixtures/models/sd15-tiny" "$tmp/m"; }
gen=(generate -m "$tmp/m" -p "a cat" --steps 2 -q -o "$tmp/out.png")

fresh; rm -rf "$tmp/m/vae"
expect "missing component folder" "$tmp/m/vae" -- "${gen[@]}"

fresh; rm "$tmp/m/unet/diffusion_pytorch_model.safetensors"
expect "missing weights file" "$tmp/m/unet" -- "${gen[@]}"

fresh; rm "$tmp/m/tokenizer/merges.txt"
expect "missing tokenizer file" "merges.txt" -- "${gen[@]}"

fresh; sed -i 's/"UNet2DConditionModel"/"FooNet2DModel"/' "$tmp/m/model_index.json"
expect "unknown component class" "FooNet2DModel" -- "${gen[@]}"

fresh; sed -i 's/"StableDiffusionPipeline"/"FooPipeline"/' "$tmp/m/model_index.json"
expect "unknown pipeline class" "FooPipeline" -- "${gen[@]}"

fresh; printf '{"_class_name": "UNet2DConditionModel", ' > "$tmp/m/unet/config.json"
expect "invalid JSON" "unet/config.json" -- "${gen[@]}"

fresh; truncate -s 5000 "$tmp/m/unet/diffusion_pytorch_model.safetensors"
expect "truncated safetensors" "diffusion_pytorch_model.safetensors" -- "${gen[@]}"

fresh; truncate -s 4 "$tmp/m/vae/diffusion_pytorch_model.safetensors"
expect "safetensors shorter than its header" "vae/diffusion_pytorch_model.safetensors" -- "${gen[@]}"

# flow families: a T5 tokenizer folder without any tokenizer file, a transformer
# config naming an unknown block layout
fresh_flux() { rm -rf "$tmp/m"; cp -r "$fixtures/models/flux-tiny" "$tmp/m"; }
fresh_flux; rm -f "$tmp/m/tokenizer_2/spiece.model" "$tmp/m/tokenizer_2/tokenizer.json"
expect "T5 folder without a tokenizer file" "$tmp/m/tokenizer_2" -- "${gen[@]}"
fresh_flux; sed -i 's/"num_single_layers": [0-9]*/"num_single_layers": -3/' "$tmp/m/transformer/config.json"
expect "FLUX transformer with a negative block count" "transformer/config.json" -- "${gen[@]}"
rm -rf "$tmp/m"; cp -r "$fixtures/models/sd35-tiny" "$tmp/m"
sed -i 's/"SD3Transformer2DModel"/"SD4Transformer2DModel"/' "$tmp/m/transformer/config.json"
expect "SD3 transformer config of another class" "transformer/config.json" -- "${gen[@]}"

fresh
expect "unwritable output" "/nonexistent-dir/out.png" -- generate -m "$tmp/m" -p "a cat" --steps 2 -q -o /nonexistent-dir/out.png
expect "missing model folder" "$tmp/nope" -- generate -m "$tmp/nope" -p "a cat" -q -o "$tmp/out.png"
expect "bad width" "multiples of 8" -- generate -m "$tmp/m" -p "a cat" -W 60 -q -o "$tmp/out.png"
expect "bad steps" "--steps" -- generate -m "$tmp/m" -p "a cat" --steps zero -q -o "$tmp/out.png"
expect "bad --matmul" "--matmul expects" -- generate -m "$tmp/m" -p "a cat" --matmul fp4 -q -o "$tmp/out.png"
expect "unknown scheduler" "NoSuchScheduler" -- generate -m "$tmp/m" -p "a cat" --scheduler NoSuchScheduler -q -o "$tmp/out.png"
expect "missing -o" "-o OUT.png" -- generate -m "$tmp/m" -p "a cat"
expect "unknown command" "unknown command" -- frobnicate

# and the good path writes a PNG carrying the parameters chunk
"$qdiff" generate -m "$tmp/m" -p "a cat" --steps 2 --seed 7 -q -o "$tmp/good.png" 2>"$tmp/stderr"
if [[ $? -eq 0 && -s "$tmp/good.png" ]] && grep -aq "Seed: 7" "$tmp/good.png"; then
  echo "ok   good run writes a PNG with parameters"; pass=$((pass + 1))
else
  echo "FAIL good run: $(cat "$tmp/stderr")"; fail=$((fail + 1))
fi

# a consistent folder whose UNet outputs 8 channels for 4-channel latents
if "$py" "$(dirname "$0")/tools/make_inpaint_unet.py" "$fixtures/models/sd15-tiny" "$tmp/wide_out" wide-out; then
  expect "unet out_channels 8" "denoiser outputs 8 channels" -- generate -m "$tmp/wide_out" -p x --steps 1 -o "$tmp/out.png"
else
  bad "make_inpaint_unet.py wide-out"
fi

finish
