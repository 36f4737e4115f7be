#!/usr/bin/env bash
# generate --init-image --mask (inpainting) with sd15-tiny (PNDM: no per-step noise), fp32:
#   - a white mask = image-to-image, pixel for pixel (the masked image's encode draw comes
#     after every draw a deterministic scheduler uses);
#   - a half mask keeps the latents of an all-black-mask run (= the image latents) exactly
#     in the kept latent columns (--save-latents) and changes the repainted ones;
#   - an RGBA mask (opaque = repaint, A1111) and an inverted mask with --mask-invert give
#     the same picture as the white-on-black mask; a JPEG mask resized from 32x32 too;
#   - the PNG parameters record "Mask blur: N" and the inpaint default strength (1 for SD1.5);
#     --mask-blur changes the k-sampler's (soft, bilinear) mask;
#   - --mask-overlay pastes the init image back: kept pixels exactly, repainted ones untouched;
#   - bad input: --mask without --init-image, --mask-blur without --mask, a missing or
#     corrupt mask file, a bad --mask-blur: exit 2, a message, no output left behind;
#   - a 9-channel inpainting UNet runs (zero extra weights: text-to-image's latents at
#     strength 1; with --sampler euler the 4-channel model's k-sampler inpainting pixels),
#     and fails without a mask.
# usage: cli_inpaint.sh path/to/qdiff path/to/tests/fixtures
set -u
qdiff=$1
. "$(dirname "$0")/tools/cli_common.sh"
fx=$2
tools=$(cd "$(dirname "$0")/tools" && pwd)   # lora_reference.st_read reads the saved latents
export QD_PRECISION=fp32

sd="$fx/models/sd15-tiny"
pic="$fx/goldens/shapes-sd/pipe_00.png"   # 64x64
gen=(generate -m "$sd" -p "a cat" --steps 4 --seed 9 -q --init-image "$pic")

same() { "$py" -c "from PIL import Image; import sys; print(Image.open(sys.argv[1]).tobytes() == Image.open(sys.argv[2]).tobytes())" "$1" "$2" 2>&1; }

"$py" -c "
from PIL import Image
W = Image.new('L', (64, 64), 255); W.save('$tmp/white.png')
Image.new('L', (64, 64), 0).save('$tmp/black.png')
h = Image.new('L', (64, 64), 0); h.paste(255, (0, 0, 32, 64)); h.save('$tmp/half.png')
h.convert('RGB').resize((32, 32), Image.NEAREST).save('$tmp/half32.jpg', quality=100)
inv = Image.new('L', (64, 64), 255); inv.paste(0, (0, 0, 32, 64)); inv.save('$tmp/half_inv.png')
a = Image.new('RGBA', (64, 64), (0, 0, 0, 0)); a.paste((10, 20, 30, 255), (0, 0, 32, 64)); a.save('$tmp/half_rgba.png')
" || bad "making masks with PIL"

"$qdiff" "${gen[@]}" --strength 0.5 -o "$tmp/i2i.png" && "$qdiff" "${gen[@]}" --strength 0.5 --mask "$tmp/white.png" -o "$tmp/w.png"
[[ $(same "$tmp/i2i.png" "$tmp/w.png") == True ]] && ok "white mask = image-to-image, pixel for pixel" || bad "white mask vs img2img"
p=$(png_param "$tmp/w.png")
[[ "$p" == *"Denoising strength: 0.5, Mask blur: 0,"* ]] && ok "PNG parameters: Denoising strength 0.5, Mask blur: 0" || bad "PNG parameters: $p"

"$qdiff" "${gen[@]}" --strength 0.75 --mask "$tmp/black.png" --save-latents "$tmp/black.safetensors" -o "$tmp/b.png" &&
"$qdiff" "${gen[@]}" --strength 0.75 --mask "$tmp/half.png" --save-latents "$tmp/half.safetensors" -o "$tmp/h.png"
r=$("$py" - "$tools" "$tmp/black.safetensors" "$tmp/half.safetensors" <<'PY'
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from lora_reference import st_read
k, x = (st_read(p)[0]["latents"] for p in sys.argv[2:4])
w = k.shape[3]
kept = np.abs(x[..., w // 2:] - k[..., w // 2:]).max()
moved = np.abs(x[..., :w // 2] - k[..., :w // 2]).max()
print("ok" if kept == 0 and moved > 1e-3 else "bad", kept, moved)
PY
)
[[ "$r" == ok* ]] && ok "half mask: kept latent columns equal the image latents exactly, repainted ones change ($r)" || bad "half mask latents: $r"

"$qdiff" "${gen[@]}" --mask "$tmp/half.png" -o "$tmp/h1.png" && "$qdiff" "${gen[@]}" --mask "$tmp/half_rgba.png" -o "$tmp/h2.png" &&
"$qdiff" "${gen[@]}" --mask "$tmp/half_inv.png" --mask-invert -o "$tmp/h3.png" && "$qdiff" "${gen[@]}" --mask "$tmp/half32.jpg" -o "$tmp/h4.png"
[[ $(same "$tmp/h1.png" "$tmp/h2.png") == True ]] && ok "RGBA mask (opaque = repaint) = the luminance mask" || bad "RGBA mask"
[[ $(same "$tmp/h1.png" "$tmp/h3.png") == True ]] && ok "--mask-invert of the inverted mask = the mask" || bad "--mask-invert"
[[ $(same "$tmp/h1.png" "$tmp/h4.png") == True ]] && ok "a 32x32 JPEG mask resized to 64x64 = the PNG mask" || bad "resized JPEG mask"
p=$(png_param "$tmp/h1.png")
[[ "$p" == *"Denoising strength: 1, Mask blur: 0,"* ]] && ok "SD1.5 inpaint default strength 1 recorded" || bad "default strength: $p"
# the diffusers classes binarize the mask per latent cell (a blurred seam may not move a
# cell); the k-sampler's bilinear mask sees the blur
"$qdiff" "${gen[@]}" --sampler euler --mask "$tmp/half.png" -o "$tmp/h6.png" &&
"$qdiff" "${gen[@]}" --sampler euler --mask "$tmp/half.png" --mask-blur 4 -o "$tmp/h5.png"
p=$(png_param "$tmp/h5.png")
[[ "$p" == *"Mask blur: 4,"* && $(same "$tmp/h6.png" "$tmp/h5.png") == False ]] && ok "--mask-blur 4 recorded and changes the k-sampler's picture" || bad "--mask-blur: $p"

# --mask-overlay (A1111's paste-back): unmasked pixels = the init image exactly, masked ones =
# the run without it; with a blurred mask, pixels in between are a mix of the two
"$qdiff" "${gen[@]}" --sampler euler --mask "$tmp/half.png" --mask-overlay -o "$tmp/ov.png" &&
"$qdiff" "${gen[@]}" --sampler euler --mask "$tmp/half.png" --mask-blur 4 --mask-overlay -o "$tmp/ovb.png"
r=$("$py" - "$tmp/ov.png" "$tmp/h6.png" "$pic" "$tmp/ovb.png" "$tmp/h5.png" <<'PY'
import sys
import numpy as np
from PIL import Image
ov, gen, pic, ovb, genb = (np.asarray(Image.open(f).convert("RGB")).astype(int) for f in sys.argv[1:6])
kept = np.abs(ov[:, 32:] - pic[:, 32:]).max()      # mask 0 (x >= 32): the original
painted = np.abs(ov[:, :32] - gen[:, :32]).max()   # mask 1: the generated picture
far = max(np.abs(ovb[:, 44:] - pic[:, 44:]).max(), np.abs(ovb[:, :28] - genb[:, :28]).max())   # past the 21-tap blur
lo, hi = np.minimum(pic, genb), np.maximum(pic, genb)   # the seam: between the two, +-1 rounding
between = int(((ovb < lo - 1) | (ovb > hi + 1)).sum())
print("ok" if kept == 0 and painted == 0 and far == 0 and between == 0 and (ov != gen).any() else "bad",
      kept, painted, far, between)
PY
)
[[ "$r" == ok* ]] && ok "--mask-overlay: kept pixels = the init image, repainted = the plain run, blurred seam mixes ($r)" ||
  bad "--mask-overlay: $r"
expect "--mask-overlay without --mask" "go with --mask" -- "${gen[@]}" -o "$tmp/out.png" --mask-overlay

expect "--mask without --init-image" "go with --init-image" -- generate -m "$sd" -p x --steps 2 -q -o "$tmp/out.png" --mask "$tmp/half.png"
expect "--mask-blur without --mask" "go with --mask" -- "${gen[@]}" -o "$tmp/out.png" --mask-blur 4
expect "missing mask" "$tmp/nope.png" -- "${gen[@]}" -o "$tmp/out.png" --mask "$tmp/nope.png"
printf 'not an image' > "$tmp/corrupt.png"
expect "corrupt mask" "$tmp/corrupt.png: not a PNG or JPEG" -- "${gen[@]}" -o "$tmp/out.png" --mask "$tmp/corrupt.png"
expect "bad --mask-blur" "--mask-blur expects" -- "${gen[@]}" -o "$tmp/out.png" --mask "$tmp/half.png" --mask-blur -1

# --masked-content (A1111's "Masked content"; the library's cases are in test_inpaint_content.c):
# recorded in the PNG parameters, changes the repainted area, bad names refused
"$qdiff" "${gen[@]}" --mask "$tmp/half.png" --sampler euler --masked-content latent-noise -o "$tmp/ln.png" 2>"$tmp/err" &&
  "$qdiff" "${gen[@]}" --mask "$tmp/half.png" --sampler euler -o "$tmp/lo.png" 2>>"$tmp/err"
if [[ $? -eq 0 ]]; then
  [[ $(png_param "$tmp/ln.png") == *"Masked content: latent noise"* ]] && ok "PNG parameters record 'Masked content: latent noise'" ||
    bad "parameters: $(png_param "$tmp/ln.png")"
  [[ $(same "$tmp/ln.png" "$tmp/lo.png") == False ]] && ok "latent noise changes the picture" || bad "latent noise changed nothing"
else bad "--masked-content run: $(cat "$tmp/err")"; fi
expect "bad --masked-content" "--masked-content expects original, fill" -- "${gen[@]}" -o "$tmp/out.png" --mask "$tmp/half.png" --masked-content blur
expect "--masked-content without --mask" "go with --mask" -- "${gen[@]}" -o "$tmp/out.png" --masked-content fill

# a 9-channel inpainting UNet (StableDiffusionInpaintPipeline, conv_in over latents + mask +
# masked-image latents): sd15-tiny with conv_in widened by zero weights. At strength 1 (the
# default) the start is the seed's noise (the masked image's draw comes after it) and there
# is no blend, so the latents equal plain text-to-image's exactly; with --sampler (ComfyUI's
# InpaintModelConditioning + KSampler) the zero weights leave the noise-mask run of the
# 4-channel model; errors without a mask.
"$py" "$tools/make_inpaint_unet.py" "$sd" "$tmp/inp9" concat || bad "making the 9-channel model"
"$qdiff" "${gen[@]}" -m "$tmp/inp9" --mask "$tmp/half.png" --save-latents "$tmp/i9.safetensors" -o "$tmp/i9.png" &&
"$qdiff" generate -m "$sd" -p "a cat" --steps 4 --seed 9 -q --save-latents "$tmp/t2i.safetensors" -o "$tmp/t2i.png"
r=$("$py" - "$tools" "$tmp/i9.safetensors" "$tmp/t2i.safetensors" <<'PY'
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from lora_reference import st_read
x, t = (st_read(p)[0]["latents"] for p in sys.argv[2:4])
r = float(np.linalg.norm(x - t) / np.linalg.norm(t))
print("ok" if r <= 1e-6 else "bad", r)
PY
)
[[ "$r" == ok* && -s "$tmp/i9.png" ]] && ok "9-channel inpainting UNet, strength 1: latents = text-to-image's (rel L2 <= 1e-6: $r)" || bad "9-channel run: $r"
expect "9-channel UNet without a mask" "needs an init image and a mask" -- generate -m "$tmp/inp9" -p x --steps 2 -q -o "$tmp/out.png" --init-image "$pic"
"$qdiff" "${gen[@]}" -m "$tmp/inp9" --mask "$tmp/half.png" --sampler euler -o "$tmp/k9.png" 2>"$tmp/err" &&
  "$qdiff" "${gen[@]}" --mask "$tmp/half.png" --sampler euler -o "$tmp/k4.png" 2>>"$tmp/err"
[[ $? -eq 0 && $(same "$tmp/k9.png" "$tmp/k4.png") == True ]] &&
  ok "9-channel UNet with --sampler euler = the 4-channel model's k-sampler inpainting, pixel for pixel" ||
  bad "9-channel k-sampler run: $(cat "$tmp/err")"

finish
