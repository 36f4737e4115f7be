#!/usr/bin/env python3
"""Write tests/fixtures/inpaint_fill: the truth for qd_inpaint_fill (A1111's "Masked content:
fill", modules/masking.py fill()), computed with Pillow the way A1111 does it:

    image_mod = RGBA canvas, transparent
    image_masked = RGBa canvas; paste(image as RGBa, mask=invert(mask))
    for radius, repeats in (256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1):
        blurred = image_masked.filter(GaussianBlur(radius)).convert("RGBA")
        alpha_composite blurred over image_mod `repeats` times
    result = image_mod.convert("RGB")

Inputs: a 72x40 crop of the shapes-sd golden picture (odd, non-square: both box-blur
branches, radius > width and < width) and a mask with hard and blurred (soft) parts.
usage: make_fill_fixture.py SHAPES_PNG OUT_DIR   (Pillow 9.4, Debian 12's python3-pil)"""
import sys
import PIL
from PIL import Image, ImageFilter, ImageOps

src, out = sys.argv[1:3]
image = Image.open(src).convert("RGB").crop((0, 8, 64, 48)).resize((72, 40), Image.BICUBIC)
mask = Image.new("L", image.size, 0)
mask.paste(255, (20, 6, 44, 30))
mask.paste(160, (50, 20, 60, 36))
mask = mask.filter(ImageFilter.GaussianBlur(2))

image_mod = Image.new("RGBA", image.size)
image_masked = Image.new("RGBa", image.size)
image_masked.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
image_masked = image_masked.convert("RGBa")
for radius, repeats in [(256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)]:
    blurred = image_masked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
    for _ in range(repeats):
        image_mod.alpha_composite(blurred)
image.save(f"{out}/image.png")
mask.save(f"{out}/mask.png")
image_mod.convert("RGB").save(f"{out}/filled.png")
print(f"Pillow {PIL.__version__}: wrote image.png, mask.png, filled.png ({image.size[0]}x{image.size[1]})")
