#!/usr/bin/env bash
# generate --only-masked PAD (A1111's "Inpaint area: Only masked"), sd15-tiny, fp32, against
# an independent composite made in Python (PIL + numpy) from a plain inpainting run:
#   - the box (A1111's get_crop_region_v2 + expand_crop_region, written out below from
#     their definition) of a mask whose padded box hits the top border and is grown to
#     the 64x64 output's aspect is exactly 64x64: the crop needs no resizing, so the result
#     must equal `generate --init-image BOX.png --mask BOXMASK.png` pasted at the box with
#     the original over it (alpha 255 - mask), pixel for pixel, at the init image's size;
#   - a box that needs resizing (blurred mask, 64x32 output): the output has the init
#     image's size, every pixel outside the box and every pixel the mask keeps (0) is the
#     original's, the box changes; the PNG parameters say "Inpaint area: Only masked,
#     Masked area padding: N" and the 64x32 size generated;
#   - an empty mask: a warning, and the whole picture's image-to-image (as A1111);
#   - bad input: --only-masked without --mask, a negative padding: exit 2, no output.
# usage: cli_only_masked.sh path/to/qdiff path/to/tests/fixtures
set -u
qdiff=$1
. "$(dirname "$0")/tools/cli_common.sh"
fx=$2
export QD_PRECISION=fp32
sd="$fx/models/sd15-tiny"
gen=(generate -m "$sd" -p "a cat" --steps 3 --seed 5 -q --sampler euler)

"$py" - "$fx/goldens/shapes-sd/pipe_00.png" "$tmp" <<'PY' || bad "making the pictures with PIL"
import sys
from PIL import Image
src, tmp = sys.argv[1:3]
Image.open(src).convert("RGB").resize((128, 96), Image.BICUBIC).save(f"{tmp}/init.png")
m = Image.new("L", (128, 96), 0); m.paste(255, (60, 20, 80, 40)); m.save(f"{tmp}/mask.png")
m = Image.new("L", (128, 96), 0); m.paste(255, (20, 50, 44, 70)); m.save(f"{tmp}/mask2.png")
Image.new("L", (128, 96), 0).save(f"{tmp}/empty.png")
PY

# A1111's box, from its definition (masking.get_crop_region_v2, masking.expand_crop_region)
box() {
  "$py" - "$@" <<'PY'
import sys
import numpy as np
from PIL import Image
mask, pad, pw, ph = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
m = Image.open(mask).convert("L")
x1, y1, x2, y2 = m.getbbox()
W, H = m.size
x1, y1, x2, y2 = max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, W), min(y2 + pad, H)
if (x2 - x1) / (y2 - y1) > pw / ph:
    d = int((x2 - x1) / (pw / ph) - (y2 - y1)); y1 -= d // 2; y2 += d - d // 2
    if y2 >= H: y1 -= y2 - H; y2 = H
    if y1 < 0: y2 -= y1; y1 = 0
    y2 = min(y2, H)
else:
    d = int((y2 - y1) * (pw / ph) - (x2 - x1)); x1 -= d // 2; x2 += d - d // 2
    if x2 >= W: x1 -= x2 - W; x2 = W
    if x1 < 0: x2 -= x1; x1 = 0
    x2 = min(x2, W)
print(x1, y1, x2, y2)
PY
}

# 1. a 64x64 box: only-masked = plain inpainting of the box, pasted back
read -r x1 y1 x2 y2 < <(box "$tmp/mask.png" 22 64 64)
[[ "$x1 $y1 $x2 $y2" == "38 0 102 64" ]] && ok "the reference box is 64x64 at (38, 0): padded into the top edge, grown to 1:1" ||
  bad "reference box: $x1 $y1 $x2 $y2"
"$py" -c "
from PIL import Image
Image.open('$tmp/init.png').crop(($x1, $y1, $x2, $y2)).save('$tmp/box.png')
Image.open('$tmp/mask.png').crop(($x1, $y1, $x2, $y2)).save('$tmp/boxmask.png')"
"$qdiff" "${gen[@]}" --init-image "$tmp/init.png" --mask "$tmp/mask.png" --only-masked 22 -W 64 -H 64 -o "$tmp/om.png" 2>"$tmp/err" &&
  "$qdiff" "${gen[@]}" --init-image "$tmp/box.png" --mask "$tmp/boxmask.png" -W 64 -H 64 -o "$tmp/plain.png" 2>>"$tmp/err"
if [[ $? -eq 0 ]] && clean; then
  r=$("$py" - "$tmp" "$x1" "$y1" <<'PY'
import sys
import numpy as np
from PIL import Image
tmp, x, y = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
orig = np.array(Image.open(f"{tmp}/init.png")).astype(np.int64)
mask = np.array(Image.open(f"{tmp}/mask.png")).astype(np.int64)[..., None]
plain = np.array(Image.open(f"{tmp}/plain.png")).astype(np.int64)
got = np.array(Image.open(f"{tmp}/om.png")).astype(np.int64)
want = orig.copy()
want[y:y + 64, x:x + 64] = plain
a = 255 - mask   # the original's alpha
want = (orig * a + want * (255 - a) + 127) // 255
print(got.shape == want.shape and int(np.abs(got - want).max()) == 0, got.shape, int(np.abs(got - want).max()) if got.shape == want.shape else -1)
PY
)
  [[ $r == True* ]] && ok "--only-masked 22 = the box's plain inpainting pasted back under the original, pixel for pixel ($r)" ||
    bad "--only-masked vs the composite: $r"
else bad "--only-masked run: $(cat "$tmp/err")"; fi

# 2. a resized box (64x32 output, blurred mask): only the box changes, kept pixels stay
"$qdiff" "${gen[@]}" --init-image "$tmp/init.png" --mask "$tmp/mask2.png" --mask-blur 3 --only-masked 4 -W 64 -H 32 \
  -o "$tmp/om2.png" 2>"$tmp/err"
if [[ $? -eq 0 ]] && clean; then
  r=$("$py" - "$tmp" "$qdiff" <<'PY'
import subprocess, sys
import numpy as np
from PIL import Image
tmp = sys.argv[1]
orig = np.array(Image.open(f"{tmp}/init.png")).astype(np.int64)
got = np.array(Image.open(f"{tmp}/om2.png")).astype(np.int64)
changed = np.abs(got - orig).max(axis=2) > 0
ys, xs = np.nonzero(changed)
# the blurred mask's box: the rectangle (20, 50, 44, 70) grown by the blur's reach (<= 8 px
# for sigma 3: ksize 2*int(7.5+0.5)+1) and the padding 4, then to 2:1
ok = got.shape == orig.shape and changed.any() and xs.min() >= 20 - 12 and xs.max() < 44 + 12 and \
     ys.min() >= 50 - 12 and ys.max() < 70 + 12
print(ok, got.shape, (xs.min(), xs.max(), ys.min(), ys.max()) if changed.any() else None)
PY
)
  [[ $r == True* ]] && ok "resized box: init-sized output, changes only around the mask ($r)" || bad "resized box: $r"
  t=$(png_param "$tmp/om2.png")
  [[ $t == *"Size: 64x32"*"Inpaint area: Only masked, Masked area padding: 4"* ]] &&
    ok "PNG parameters: Size 64x32, Inpaint area: Only masked, Masked area padding: 4" || bad "PNG parameters: $t"
else bad "--only-masked resized run: $(cat "$tmp/err")"; fi

# 3. an empty mask: A1111 runs image-to-image of the whole picture
"$qdiff" "${gen[@]}" --init-image "$tmp/init.png" --mask "$tmp/empty.png" --only-masked 8 -o "$tmp/e.png" 2>"$tmp/err" &&
  grep -q "is empty: --only-masked runs image-to-image of the whole picture" "$tmp/err" &&
  "$qdiff" "${gen[@]}" --init-image "$tmp/init.png" -o "$tmp/e2.png" 2>>"$tmp/err"
if [[ $? -eq 0 ]] && "$py" -c "
import sys; from PIL import Image
sys.exit(0 if Image.open('$tmp/e.png').tobytes() == Image.open('$tmp/e2.png').tobytes() else 1)"; then
  ok "empty mask: a warning and the whole picture's image-to-image, pixel for pixel"
else bad "empty mask: $(cat "$tmp/err")"; fi

expect "--only-masked without --mask" "go with --mask" -- "${gen[@]}" --init-image "$tmp/init.png" --only-masked 4 -o "$tmp/out.png"
expect "negative padding" "--only-masked" -- "${gen[@]}" --init-image "$tmp/init.png" --mask "$tmp/mask.png" --only-masked -3 -o "$tmp/out.png"
expect "a size the model cannot make" "multiples of 8" -- "${gen[@]}" --init-image "$tmp/init.png" --mask "$tmp/mask.png" --only-masked 4 -W 60 -o "$tmp/out.png"

finish
