#!/usr/bin/env bash
# Live previews through the CLI: the preview PNG appears during a fixture generation
# (SD1.5 and FLUX layouts), and bad preview options fail with exit 2 and no output.
# usage: cli_preview.sh path/to/qdiff path/to/tests/fixtures
set -u
qdiff=$1
fx=$2
. "$(dirname "$0")/tools/cli_common.sh"

# PNG width and height from the IHDR chunk (bytes 16..23, big-endian)
png_size() { od -An -tu1 -j16 -N8 "$1" | awk '{printf "%dx%d", $1*16777216+$2*65536+$3*256+$4, $5*16777216+$6*65536+$7*256+$8}'; }

"$qdiff" generate -m "$fx/models/sd15-tiny" -p "a cat" --steps 3 --seed 1 -q -o "$tmp/a.png" \
  --preview "$tmp/a-preview.png" --preview-vae "$fx/models/sd15-tiny/vae" 2>"$tmp/err"
if [[ $? -eq 0 && -s "$tmp/a-preview.png" && "$(png_size "$tmp/a-preview.png")" == "64x64" ]]; then
  ok "SD1.5 preview written, 64x64"
else bad "SD1.5 preview: $(cat "$tmp/err")"; fi

"$qdiff" generate -m "$fx/models/flux-tiny" -p "a cat" --steps 2 -W 96 -H 64 --seed 1 -q -o "$tmp/f.png" \
  --preview "$tmp/f-preview.png" --preview-vae "$fx/models/flux-tiny/vae" --preview-every 2 2>"$tmp/err"
if [[ $? -eq 0 && -s "$tmp/f-preview.png" && "$(png_size "$tmp/f-preview.png")" == "96x64" ]]; then
  ok "FLUX preview (packed latents unpacked) written, 96x64"
else bad "FLUX preview: $(cat "$tmp/err")"; fi

"$qdiff" generate -m "$fx/models/sd15-tiny" -p "a cat" --steps 2 -q -o "$tmp/w.png" \
  --preview "$tmp/w-preview.png" --preview-vae "$fx/taesd/taef2_decoder.safetensors" 2>"$tmp/err"
rc=$?
if [[ $rc -eq 2 && ! -e "$tmp/w.png" && ! -e "$tmp/w-preview.png" ]] && grep -q "another model family" "$tmp/err"; then
  ok "preview VAE of another family refused: $(cat "$tmp/err")"
else bad "wrong family: rc=$rc $(cat "$tmp/err")"; fi

"$qdiff" generate -m "$fx/models/sd15-tiny" -p "a cat" -q -o "$tmp/x.png" --preview "$tmp/x-preview.png" 2>"$tmp/err"
if [[ $? -eq 2 ]] && grep -q "go together" "$tmp/err"; then ok "--preview without --preview-vae refused"
else bad "--preview alone: $(cat "$tmp/err")"; fi

"$qdiff" generate -m "$fx/models/sd15-tiny" -p "a cat" -q -o "$tmp/y.png" --preview "$tmp/y-preview.png" \
  --preview-vae "$tmp/nope.safetensors" 2>"$tmp/err"
if [[ $? -eq 2 && ! -e "$tmp/y.png" ]] && grep -q "nope.safetensors" "$tmp/err"; then ok "missing preview VAE file named"
else bad "missing preview vae: $(cat "$tmp/err")"; fi

finish
