#!/usr/bin/env bash
# qdiff quantize CHECKPOINT.safetensors OUT from the command line: single files written
# by tests/tools/make_single_file.py (original key names) give the folder the diffusers
# folder gives (also with --merge-lora: the LoRA names the diffusers layers), --dry-run
# --json reports the family, without --config-from the missing parts are named, and bad
# input exits 2 with a message and leaves nothing behind. The conversion itself is
# checked in test_single_file.c.
# usage: cli_single_file.sh path/to/qdiff path/to/tests/fixtures
set -u
qdiff=$1
fixtures=$(realpath "$2")
tools=$(dirname "$(realpath "$0")")/tools
. "$(dirname "$0")/tools/cli_common.sh"
m=$fixtures/models
opts=(-q --no-default-skips --min-numel 0 --min-channels 16)


python3 "$tools/make_single_file.py" flux "$m/flux-tiny" "$tmp/flux.safetensors" &&
  python3 "$tools/make_single_file.py" sdxl "$m/sdxl-tiny" "$tmp/sdxl.safetensors" --extra ||
  { echo "FAIL make_single_file.py"; exit 1; }

# tensors of two safetensors files equal (names, dtypes, shapes, bytes)
same_st() {
  python3 - "$tools" "$1" "$2" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
from make_single_file import read_st
a, b = read_st(sys.argv[2]), read_st(sys.argv[3])
sys.exit(0 if a == b else 1)
EOF
}

# --help
if "$qdiff" quantize --help >"$tmp/stdout" 2>&1 && grep -q -- "--config-from DIR" "$tmp/stdout" &&
   grep -q "single-file checkpoint" "$tmp/stdout"; then ok "--help documents single files"; else bad "--help"; fi

# a LoRA on the converted (diffusers) names: single_blocks.0.linear1 became to_q/k/v + proj_mlp
python3 - "$tmp" <<'EOF'
import struct, sys
def write(path, tensors):
    import json
    h, off, blobs = {}, 0, []
    for name, shape, vals in tensors:
        raw = struct.pack("<%df" % len(vals), *vals)
        h[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        blobs.append(raw)
    hb = json.dumps(h).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    open(path, "wb").write(struct.pack("<Q", len(hb)) + hb + b"".join(blobs))
r = 2
down = [((i * 7) % 11 - 5) / 50.0 for i in range(r * 64)]
up = [((i * 5) % 13 - 6) / 40.0 for i in range(64 * r)]
mlp_up = [((i * 3) % 7 - 3) / 30.0 for i in range(256 * r)]
write(sys.argv[1] + "/lora.safetensors", [
    ("transformer.single_transformer_blocks.0.attn.to_k.lora_A.weight", [r, 64], down),
    ("transformer.single_transformer_blocks.0.attn.to_k.lora_B.weight", [64, r], up),
    ("transformer.single_transformer_blocks.1.proj_mlp.lora_A.weight", [r, 64], down),
    ("transformer.single_transformer_blocks.1.proj_mlp.lora_B.weight", [256, r], mlp_up)])
write(sys.argv[1] + "/lora_nomatch.safetensors", [
    ("transformer.no_such_block.lora_A.weight", [r, 64], down),
    ("transformer.no_such_block.lora_B.weight", [64, r], up)])
EOF

T=transformer/diffusion_pytorch_model.safetensors
if "$qdiff" quantize "$m/flux-tiny" "$tmp/ref" "${opts[@]}" --merge-lora "$tmp/lora.safetensors:0.8" >"$tmp/stdout" 2>"$tmp/stderr" &&
   "$qdiff" quantize "$tmp/flux.safetensors" "$tmp/sf" --config-from "$m/flux-tiny" "${opts[@]}" \
     --merge-lora "$tmp/lora.safetensors:0.8" >"$tmp/stdout" 2>"$tmp/stderr" && clean &&
   "$qdiff" quantize "$tmp/flux.safetensors" "$tmp/nolora" --config-from "$m/flux-tiny" "${opts[@]}" >/dev/null 2>&1 &&
   same_st "$tmp/sf/$T" "$tmp/ref/$T" && ! same_st "$tmp/sf/$T" "$tmp/nolora/$T" &&
   cmp -s "$tmp/sf/transformer/config.json" "$tmp/ref/transformer/config.json" &&
   cmp -s "$tmp/sf/model_index.json" "$m/flux-tiny/model_index.json"; then
  ok "FLUX single file + LoRA on diffusers names: same transformer tensors and config as from the folder (and not the LoRA-less ones)"
else
  bad "FLUX single file + LoRA: $(head -c 600 "$tmp/stderr")"
fi

# --dry-run --json: the family, where configs come from, nothing missing
if "$qdiff" quantize "$tmp/flux.safetensors" --dry-run --json --config-from "$m/flux-tiny" "${opts[@]}" >"$tmp/stdout" 2>"$tmp/stderr" &&
   python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["single_file_family"] == "FLUX.1" and d["missing"] == [] and d["totals"]["quantized"] > 0 else 1)' "$tmp/stdout"; then
  ok "--dry-run --json reports the family"
else
  bad "--dry-run --json: $(head -c 600 "$tmp/stdout") $(head -c 300 "$tmp/stderr")"
fi

# no --config-from: inferred configs, the family's scheduler, the tokenizers named as missing
if "$qdiff" quantize "$tmp/sdxl.safetensors" "$tmp/xl" "${opts[@]}" >"$tmp/stdout" 2>"$tmp/stderr" && clean &&
   grep -q "the output folder lacks: tokenizer tokenizer_2" "$tmp/stdout" && [[ -f $tmp/xl/unet/config.json ]] &&
   [[ -f $tmp/xl/text_encoder_2/config.json ]] && grep -q EulerDiscreteScheduler "$tmp/xl/scheduler/scheduler_config.json" &&
   grep -q StableDiffusionXLPipeline "$tmp/xl/model_index.json"; then
  ok "SDXL without --config-from: configs inferred, missing tokenizers named"
else
  bad "SDXL without --config-from: $(head -c 600 "$tmp/stdout") $(head -c 600 "$tmp/stderr")"
fi

# generate straight from the single file: the folder's latents
g=(-p "a red circle" --steps 2 -W 64 -H 64 --seed 3 -q)
if "$qdiff" generate -m "$tmp/flux.safetensors" --config-from "$m/flux-tiny" "${g[@]}" -o "$tmp/a.png" --save-latents "$tmp/a.st" 2>"$tmp/stderr" &&
   "$qdiff" generate -m "$m/flux-tiny" "${g[@]}" -o "$tmp/b.png" --save-latents "$tmp/b.st" 2>>"$tmp/stderr" && clean &&
   same_st "$tmp/a.st" "$tmp/b.st"; then
  ok "generate -m FILE --config-from DIR: the folder's latents"
else
  bad "generate from the single file: $(head -c 600 "$tmp/stderr")"
fi
rm -f "$tmp"/a.* "$tmp"/b.*
if ! "$qdiff" generate -m "$tmp/flux.safetensors" "${g[@]}" -o "$tmp/out.png" >/dev/null 2>"$tmp/stderr" &&
   grep -q -- "--config-from" "$tmp/stderr" && clean && [[ ! -e $tmp/out.png ]]; then
  ok "generate from a single file without --config-from: $(head -c 200 "$tmp/stderr")"
else
  bad "generate without --config-from: $(head -c 300 "$tmp/stderr")"
fi

expect "LoRA naming no converted layer" "0 of its 1 LoRA layers matched" -- \
  quantize "$tmp/flux.safetensors" "$tmp/out" --config-from "$m/flux-tiny" -q --merge-lora "$tmp/lora_nomatch.safetensors"
expect "unknown family" "not a checkpoint of a family qdiff converts" -- \
  quantize "$m/sd15-tiny/unet/diffusion_pytorch_model.safetensors" "$tmp/out" -q
expect "--config-from with a folder input" "--config-from is for single-file checkpoints" -- \
  quantize "$m/sd15-tiny" "$tmp/out" --config-from "$m/sd15-tiny" -q
expect "--config-from of another family" "is a StableDiffusionPipeline folder" -- \
  quantize "$tmp/flux.safetensors" "$tmp/out" --config-from "$m/sd15-tiny" -q
head -c 100000 "$tmp/flux.safetensors" >"$tmp/trunc.safetensors"
expect "truncated checkpoint" "trunc.safetensors" -- quantize "$tmp/trunc.safetensors" "$tmp/out" -q
expect "output = input checkpoint" "the output is the input checkpoint" -- \
  quantize "$tmp/flux.safetensors" "$tmp/flux.safetensors" --config-from "$m/flux-tiny" -q --force
if same_st "$tmp/flux.safetensors" "$tmp/flux.safetensors"; then ok "the checkpoint is still there"; else bad "checkpoint damaged"; fi

finish
