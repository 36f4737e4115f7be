#!/usr/bin/env bash
# generate --init-image / --strength: the output size (the image's own, rounded down to
# the model's multiple, or -W/-H), the PNG's "Denoising strength" parameter, the
# family defaults; bad input (missing, corrupt or tiny image, strength outside (0, 1],
# a strength leaving no step, --strength alone): exit status 2, a message naming the
# file or the problem, and no output file left behind. fp32 (QD_PRECISION).
# usage: cli_img2img.sh path/to/qdiff path/to/tests/fixtures
set -u
qdiff=$1
. "$(dirname "$0")/tools/cli_common.sh"
fx=$2
export QD_PRECISION=fp32

sd="$fx/models/sd15-tiny"
flux="$fx/models/flux-tiny"
pic="$fx/goldens/shapes-sd/pipe_00.png"   # 64x64
gen=(generate -m "$sd" -p "a cat" --steps 4 -q -o "$tmp/out.png")

size() { "$py" -c "import struct,sys; d=open(sys.argv[1],'rb').read(24); print('%dx%d' % struct.unpack('>II', d[16:24]))" "$1"; }

# sizes: a 72x56 crop -> 72x56 for SD (multiples of 8), 64x48 for FLUX (multiples of 16)
"$py" -c "
from PIL import Image
im = Image.open('$pic').convert('RGB').resize((72, 56))
im.save('$tmp/in72x56.png'); im.save('$tmp/in.jpg', quality=95)
Image.new('RGB', (6, 6), (255, 0, 0)).save('$tmp/tiny.png')
" || bad "making test images with PIL"
if "$qdiff" "${gen[@]}" --init-image "$tmp/in72x56.png" --strength 0.5 && [[ $(size "$tmp/out.png") == 72x56 ]]; then
  ok "SD1.5: a 72x56 init image gives a 72x56 picture"
else bad "SD1.5 72x56 init image"; fi
p=$(png_param "$tmp/out.png")
[[ "$p" == *"Denoising strength: 0.5,"* ]] && ok "PNG parameters: Denoising strength: 0.5" || bad "PNG parameters: $p"
if "$qdiff" generate -m "$flux" -p "a cat" --steps 2 -q -o "$tmp/out.png" --init-image "$tmp/in72x56.png" && [[ $(size "$tmp/out.png") == 64x48 ]]; then
  ok "FLUX: 72x56 rounds down to 64x48 (multiples of 16)"
else bad "FLUX size rounding"; fi
p=$(png_param "$tmp/out.png")
[[ "$p" == *"Denoising strength: 0.6,"* ]] && ok "FLUX default strength 0.6 recorded" || bad "FLUX default strength: $p"
if "$qdiff" "${gen[@]}" --init-image "$tmp/in.jpg" -W 64 -H 32 --sampler euler --strength 0.3 && [[ $(size "$tmp/out.png") == 64x32 ]]; then
  ok "JPEG init image resized to -W 64 -H 32 (k-sampler)"
else bad "JPEG + -W/-H"; fi
p=$(png_param "$tmp/out.png")
[[ "$p" == *"Denoising strength: 0.3,"* && "$p" == *"Sampler: euler"* ]] && ok "k-sampler strength 0.3 recorded" || bad "k-sampler parameters: $p"
# strength 1 of a flow model ignores the image: same pixels from two different init images
"$qdiff" generate -m "$flux" -p "a cat" --steps 2 -q -o "$tmp/a.png" --init-image "$pic" --strength 1 -W 64 -H 64 --seed 3 &&
"$qdiff" generate -m "$flux" -p "a cat" --steps 2 -q -o "$tmp/b.png" --init-image "$tmp/in.jpg" --strength 1 -W 64 -H 64 --seed 3
a=$("$py" -c "from PIL import Image; import sys; print(Image.open(sys.argv[1]).tobytes() == Image.open(sys.argv[2]).tobytes())" "$tmp/a.png" "$tmp/b.png" 2>&1)
# (the seed's generator draws the encode sample first, then the noise, so different images
#  give the same noise; scale_noise at sigma 1 drops the image)
[[ "$a" == True ]] && ok "FLUX strength 1: two different init images give the same picture" || bad "FLUX strength 1: $a"

expect "missing init image" "$tmp/nope.png" -- "${gen[@]}" --init-image "$tmp/nope.png"
printf 'not an image at all' > "$tmp/corrupt.png"
expect "not an image" "$tmp/corrupt.png: not a PNG or JPEG" -- "${gen[@]}" --init-image "$tmp/corrupt.png"
head -c 200 "$pic" > "$tmp/trunc.png"
expect "truncated PNG" "$tmp/trunc.png" -- "${gen[@]}" --init-image "$tmp/trunc.png"
expect "image smaller than 8 px" "smaller than the 8-pixel unit" -- "${gen[@]}" --init-image "$tmp/tiny.png"
expect "size not divisible" "multiples of 8" -- "${gen[@]}" --init-image "$pic" -W 60
expect "strength 0" "--strength expects a number in (0, 1]" -- "${gen[@]}" --init-image "$pic" --strength 0
expect "strength 1.5" "--strength expects a number in (0, 1]" -- "${gen[@]}" --init-image "$pic" --strength 1.5
expect "strength text" "--strength expects" -- "${gen[@]}" --init-image "$pic" --strength abc
expect "strength leaving no step" "leaves no step to run" -- "${gen[@]}" --init-image "$pic" --strength 0.2
expect "--strength without --init-image" "--strength and --resize-mode go with --init-image" -- "${gen[@]}" --strength 0.5

# --resize-mode (A1111's resize_mode), against pictures made here that need no resampling:
# crop: a 128x64 picture covering 64x64 = its centre 64x64; fill: a 32x64 picture fitted
# into 64x64 = it at x 16..47 with its first and last columns stretched over the margins
"$py" -c "
import numpy as np
from PIL import Image
a = np.array(Image.open('$pic').convert('RGB'))
wide = np.concatenate([a[:, ::-1], a], axis=1)            # 128x64
Image.fromarray(wide).save('$tmp/wide.png')
Image.fromarray(wide[:, 32:96]).save('$tmp/wide_crop.png')
narrow = a[:, 16:48]                                      # 32x64
Image.fromarray(np.ascontiguousarray(narrow)).save('$tmp/narrow.png')
filled = np.concatenate([np.repeat(narrow[:, :1], 16, axis=1), narrow, np.repeat(narrow[:, -1:], 16, axis=1)], axis=1)
Image.fromarray(filled).save('$tmp/narrow_fill.png')
" || bad "making the resize-mode pictures"
for rm in "crop wide wide_crop" "fill narrow narrow_fill"; do
  read -r mode src ref <<<"$rm"
  "$qdiff" "${gen[@]}" --init-image "$tmp/$src.png" --resize-mode "$mode" -W 64 -H 64 --seed 3 --strength 0.5 -o "$tmp/rm.png" 2>"$tmp/err" &&
    "$qdiff" "${gen[@]}" --init-image "$tmp/$ref.png" -W 64 -H 64 --seed 3 --strength 0.5 -o "$tmp/rm_ref.png" 2>>"$tmp/err"
  if [[ $? -eq 0 ]] && "$py" -c "
import sys; from PIL import Image
sys.exit(0 if Image.open('$tmp/rm.png').tobytes() == Image.open('$tmp/rm_ref.png').tobytes() else 1)"; then
    ok "--resize-mode $mode: = the picture $mode-resized here, pixel for pixel"
  else bad "--resize-mode $mode: $(cat "$tmp/err")"; fi
done
expect "bad --resize-mode" "--resize-mode expects just, crop or fill" -- "${gen[@]}" --init-image "$pic" --resize-mode stretch

finish
