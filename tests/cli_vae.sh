#!/usr/bin/env bash
# qdiff vae encode/decode from the command line: the taef2 round trip on photo.png
# (byte-level checks here; the numeric comparisons against the goldens are in
# test_vae_cli.c, which drives the same binary), and bad input: exit status 2, a
# message naming what is wrong, and no output file (nor temporary) left behind.
# usage: cli_vae.sh path/to/qdiff path/to/tests/fixtures
set -u
qdiff=$1
. "$(dirname "$0")/tools/cli_common.sh"
fixtures=$2
enc=$fixtures/taesd/taef2_encoder.safetensors
dec=$fixtures/taesd/taef2_decoder.safetensors
photo=$fixtures/taesd/photo.png

# ---- the good path: encode, decode, and the help text
if "$qdiff" vae encode --vae "$enc" -i "$photo" -o "$tmp/lat.safetensors" -q 2>"$tmp/stderr" &&
   "$qdiff" vae decode --vae "$dec" -i "$tmp/lat.safetensors" -o "$tmp/dec.png" -q 2>>"$tmp/stderr" &&
   [[ -s "$tmp/lat.safetensors" && -s "$tmp/dec.png" ]] && grep -aq '"latent"' "$tmp/lat.safetensors" &&
   head -c 8 "$tmp/dec.png" | grep -aq PNG; then
  ok "taef2 round trip writes a latent file (tensor \"latent\") and a PNG"
else
  bad "taef2 round trip: $(cat "$tmp/stderr")"
fi
# the .pth decoder gives the very same PNG
if "$qdiff" vae decode --vae "$fixtures/pth/taef2_decoder.pth" -i "$tmp/lat.safetensors" -o "$tmp/dec_pth.png" -q 2>"$tmp/stderr" &&
   cmp -s "$tmp/dec.png" "$tmp/dec_pth.png"; then
  ok "decoding with taef2_decoder.pth gives the identical PNG"
else
  bad "pth decode: $(cat "$tmp/stderr")"
fi
if "$qdiff" vae --help | grep -q -- "--vae PATH" && "$qdiff" --help | grep -q "vae"; then
  ok "help lists the vae command and its options"
else
  bad "help text"
fi

# --vae-tile: a tile as large as the 64 px golden decode is the one-pass decode; 32 px
# tiles (3 x 3, blended) give a different, valid PNG (numbers: test_vae_tiled.c)
kl=$fixtures/models/sd15-tiny/vae
glat=$fixtures/goldens/sd15-tiny/vae.safetensors
kl_decode() { "$qdiff" vae decode --vae "$kl" -i "$glat" -o "$1" -q "${@:2}"; }
if kl_decode "$tmp/t0.png" --vae-tile 0 2>"$tmp/stderr" && kl_decode "$tmp/t64.png" --vae-tile 64 2>>"$tmp/stderr" &&
   kl_decode "$tmp/t32.png" --vae-tile 32 2>>"$tmp/stderr" && cmp -s "$tmp/t0.png" "$tmp/t64.png" &&
   ! cmp -s "$tmp/t0.png" "$tmp/t32.png" && head -c 8 "$tmp/t32.png" | grep -aq PNG; then
  ok "--vae-tile 64 on a 64 px decode is the one-pass PNG; --vae-tile 32 tiles it"
else
  bad "--vae-tile: $(cat "$tmp/stderr")"
fi
if "$qdiff" vae --help | grep -q -- "--vae-tile PX" && "$qdiff" generate --help | grep -q -- "--vae-tile PX"; then
  ok "vae and generate help describe --vae-tile"
else
  bad "--vae-tile help"
fi

# ---- bad input
printf 'hello, not an image\n' > "$tmp/text.png"
printf '\x89PNG\r\n\x1a\nbroken' > "$tmp/broken.png"
head -c 20000 "$photo" > "$tmp/truncated.png"
cp "$enc" "$tmp/trunc_encoder.safetensors" && truncate -s 100000 "$tmp/trunc_encoder.safetensors"

expect "missing --vae" "--vae PATH" -- vae encode -i "$photo" -o "$tmp/out.safetensors"
expect "no subcommand" "encode or decode" -- vae
expect "missing image" "$tmp/nope.png" -- vae encode --vae "$enc" -i "$tmp/nope.png" -o "$tmp/out.safetensors"
expect "non-image input" "not a PNG or JPEG" -- vae encode --vae "$enc" -i "$tmp/text.png" -o "$tmp/out.safetensors"
expect "broken PNG" "broken.png" -- vae encode --vae "$enc" -i "$tmp/broken.png" -o "$tmp/out.safetensors"
expect "truncated PNG" "truncated.png" -- vae encode --vae "$enc" -i "$tmp/truncated.png" -o "$tmp/out.safetensors"
expect "missing VAE" "$tmp/none.safetensors" -- vae encode --vae "$tmp/none.safetensors" -i "$photo" -o "$tmp/out.safetensors"
expect "truncated weights" "trunc_encoder.safetensors" -- vae encode --vae "$tmp/trunc_encoder.safetensors" -i "$photo" -o "$tmp/out.safetensors"
expect "pickle that calls os.system" "os.system" -- vae decode --vae "$fixtures/pth/evil_os_system.pth" -i "$tmp/lat.safetensors" -o "$tmp/out.png"
expect "encode with a decoder only" "no encoder" -- vae encode --vae "$fixtures/pth/taef2_decoder.pth" -i "$photo" -o "$tmp/out.safetensors"
expect "width not a multiple of 8" "multiples of 8" -- vae encode --vae "$enc" -i "$photo" -W 100 -o "$tmp/out.safetensors"
expect "unwritable output" "/nonexistent-dir/out.safetensors" -- vae encode --vae "$enc" -i "$photo" -o /nonexistent-dir/out.safetensors
expect "wrong latent channels" "4 channels" -- vae decode --vae "$dec" -i "$fixtures/goldens/sd15-tiny/vae.safetensors" -o "$tmp/out.png" 2>/dev/null
expect "latent for another VAE" "takes 4" -- vae decode --vae "$fixtures/models/sd15-tiny/vae" -i "$tmp/lat.safetensors" -o "$tmp/out.png"
expect "image given as latent file" "photo.png" -- vae decode --vae "$dec" -i "$photo" -o "$tmp/out.png"
expect "missing latent file" "$tmp/none.safetensors" -- vae decode --vae "$dec" -i "$tmp/none.safetensors" -o "$tmp/out.png"
expect "negative --vae-tile" "--vae-tile" -- vae decode --vae "$kl" -i "$glat" --vae-tile -3 -o "$tmp/out.png"
expect "decode --width" "encode only" -- vae decode --vae "$dec" -i "$tmp/lat.safetensors" -W 64 -o "$tmp/out.png"

finish
