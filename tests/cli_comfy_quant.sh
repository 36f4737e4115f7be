#!/usr/bin/env bash
# qdiff quantize --format comfy_quant and --merge-lora from the command line: real runs
# on flux-tiny's transformer file (the output's keys, dtypes and .comfy_quant JSON read
# back with Python's json/struct), dry-run table and --json, LoRA merging into both
# formats, --help, and bad input: exit status 2 with a message naming the problem and
# never an output file or folder (nor a temporary) left behind. The quantized values are
# checked in test_comfy_quant_write.c, the merge math in test_lora.c.
# usage: cli_comfy_quant.sh path/to/qdiff path/to/tests/fixtures
set -u
qdiff=$1
fixtures=$(realpath "$2")
. "$(dirname "$0")/tools/cli_common.sh"
m=$fixtures/models
ckpt=$m/flux-tiny/transformer/diffusion_pytorch_model.safetensors


# safetensors writer for the LoRA files (F32 tensors), and a header reader
python3 - "$tmp" <<'PY'
import json, struct, sys
def write(path, tensors):
    header, data = {}, b""
    for name, shape, values in tensors:
        raw = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + data)
r = 2
down = [0.01 * ((i * 7) % 11 - 5) for i in range(r * 64)]
up = [0.01 * ((i * 5) % 13 - 6) for i in range(64 * r)]
write(sys.argv[1] + "/lora_ok.safetensors", [
    ("lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight", [r, 64], down),
    ("lora_unet_transformer_blocks_0_attn_to_q.lora_up.weight", [64, r], up),
    ("lora_unet_transformer_blocks_0_attn_to_q.alpha", [], [1.0])])
write(sys.argv[1] + "/lora_nomatch.safetensors", [
    ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", [r, 64], down),
    ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", [64, r], up)])
PY
header() {   # header FILE -> JSON of {name: [dtype, shape, text of U8 tensors ending in .comfy_quant]}
  python3 - "$1" <<'PY'
import json, struct, sys
f = open(sys.argv[1], "rb"); n = struct.unpack("<Q", f.read(8))[0]; h = json.loads(f.read(n)); base = 8 + n
out = {}
for k, v in h.items():
    if k == "__metadata__": continue
    text = None
    if k.endswith(".comfy_quant"):
        f.seek(base + v["data_offsets"][0]); text = f.read(v["data_offsets"][1] - v["data_offsets"][0]).decode()
    out[k] = [v["dtype"], v["shape"], text]
print(json.dumps(out, sort_keys=True))
PY
}

# --help
if "$qdiff" quantize --help >"$tmp/stdout" 2>"$tmp/stderr" && grep -q -- "--format sdnq|comfy_quant" "$tmp/stdout" &&
   grep -q -- "--merge-lora FILE\[:SCALE\]" "$tmp/stdout" && grep -q -- "--lora-dampen" "$tmp/stdout" &&
   grep -q -- "--convrot" "$tmp/stdout"; then ok "--help lists the format and LoRA options"; else bad "--help"; fi

# a real int8 run
if "$qdiff" quantize --format comfy_quant "$ckpt" "$tmp/int8.safetensors" -q >"$tmp/stdout" 2>"$tmp/stderr" && clean &&
   grep -q "^wrote" "$tmp/stdout" && header "$tmp/int8.safetensors" >"$tmp/h.json" &&
   python3 - "$tmp/h.json" <<'PY'
import json, sys
h = json.load(open(sys.argv[1]))
q = "transformer_blocks.0.attn.to_q"
assert h[q + ".comfy_quant"][2] == '{"format": "int8_tensorwise"}', h[q + ".comfy_quant"]
assert h[q + ".weight"][:2] == ["I8", [64, 64]] and h[q + ".weight_scale"][:2] == ["F32", []]
assert h[q + ".bias"][:2] == ["BF16", [64]]
assert "norm_out.linear.comfy_quant" not in h and h["norm_out.linear.weight"][0] == "BF16"
assert "transformer_blocks.0.attn.norm_q.weight" in h
PY
then ok "int8_tensorwise: configs, I8 weights, scalar F32 scales; biases and norms kept"; else bad "int8 run: $(head -c 600 "$tmp/stderr")"; fi

# ConvRot, -o form
if "$qdiff" quantize --format comfy_quant "$ckpt" -o "$tmp/rot.safetensors" --convrot -q >"$tmp/stdout" 2>"$tmp/stderr" && clean &&
   header "$tmp/rot.safetensors" >"$tmp/h.json" && python3 - "$tmp/h.json" <<'PY'
import json, sys
h = json.load(open(sys.argv[1]))
assert h["transformer_blocks.0.attn.to_q.comfy_quant"][2] == '{"format": "int8_tensorwise", "convrot": true, "convrot_groupsize": 64}'
assert h["transformer_blocks.0.attn.to_q.weight_scale"][:2] == ["F32", [64, 1]]
assert h["single_transformer_blocks.0.proj_out.comfy_quant"][2] == '{"format": "int8_tensorwise", "convrot": true, "convrot_groupsize": 64}'
PY
then ok "--convrot with -o: group 64 where 256 does not divide K, [N,1] scales"; else bad "convrot: $(head -c 600 "$tmp/stderr")"; fi

# fp8 dry run, table and JSON
if "$qdiff" quantize --format comfy_quant "$ckpt" --dry-run --weights-dtype float8_e4m3fn >"$tmp/stdout" 2>"$tmp/stderr" &&
   clean && grep -q "^total: quantized 35 layers" "$tmp/stdout" && grep -q "float8_e4m3fn" "$tmp/stdout" &&
   grep -q "name contains 'norm'" "$tmp/stdout" && no_leftovers; then
  ok "fp8 dry-run table"; else bad "dry run: $(head -c 600 "$tmp/stdout") $(head -c 300 "$tmp/stderr")"; fi
if "$qdiff" quantize --format comfy_quant "$ckpt" --dry-run --json --weights-dtype float8_e4m3fn_rowwise >"$tmp/stdout" 2>"$tmp/stderr" &&
   python3 -c "import json,sys; r=json.load(open(sys.argv[1])); t=r['totals']; assert r['weights_dtype']=='float8_e4m3fn_rowwise' and t['quantized']==35 and 0<t['rel_error']<0.05" "$tmp/stdout"; then
  ok "--json report"; else bad "--json: $(head -c 600 "$tmp/stdout")"; fi

# LoRA merged into a comfy_quant file, and into an SDNQ folder
if "$qdiff" quantize --format comfy_quant "$ckpt" "$tmp/lora.safetensors" --merge-lora "$tmp/lora_ok.safetensors:0.5" -q \
     >"$tmp/stdout" 2>"$tmp/stderr" && clean && grep -q "(1 LoRA-merged)" "$tmp/stdout"; then
  ok "comfy_quant with --merge-lora FILE:0.5"; else bad "comfy + lora: $(head -c 600 "$tmp/stdout") $(head -c 600 "$tmp/stderr")"; fi
if "$qdiff" quantize "$m/flux-tiny" "$tmp/sdnq_lora" --merge-lora "$tmp/lora_ok.safetensors" --merge-lora "$tmp/lora_ok.safetensors:2" \
     --lora-dampen 0.5 -q >"$tmp/stdout" 2>"$tmp/stderr" && clean && [[ -f "$tmp/sdnq_lora/transformer/quantization_config.json" ]]; then
  ok "SDNQ folder with two --merge-lora and --lora-dampen"; else bad "sdnq + lora: $(head -c 600 "$tmp/stderr")"; fi

# bad input
expect "unknown format" "unknown --format 'gguf'" -- quantize --format gguf "$ckpt" "$tmp/out.safetensors"
expect "unknown comfy dtype" "unknown comfy_quant weights dtype 'int4'" -- quantize --format comfy_quant "$ckpt" "$tmp/out.safetensors" --weights-dtype int4
expect "LoRA matching nothing (comfy_quant)" "0 of its 1 LoRA layers matched" -- quantize --format comfy_quant "$ckpt" "$tmp/out.safetensors" --merge-lora "$tmp/lora_nomatch.safetensors"
expect "LoRA matching nothing (sdnq)" "0 of its 1 LoRA layers matched" -- quantize "$m/flux-tiny" "$tmp/out_dir" --merge-lora "$tmp/lora_nomatch.safetensors"
expect "missing LoRA file" "no_such_lora.safetensors" -- quantize --format comfy_quant "$ckpt" "$tmp/out.safetensors" --merge-lora "$tmp/no_such_lora.safetensors"
expect "dampening out of range" "(0, 1]" -- quantize --format comfy_quant "$ckpt" "$tmp/out.safetensors" --merge-lora "$tmp/lora_ok.safetensors" --lora-dampen 2
expect "SDNQ option with comfy_quant" "--svd-rank is not available with --format comfy_quant" -- quantize --format comfy_quant "$ckpt" "$tmp/out.safetensors" --svd-rank 8
expect "comfy_quant option with sdnq" "--convrot needs --format comfy_quant" -- quantize "$m/flux-tiny" "$tmp/out_dir" --convrot
expect "ConvRot on fp8" "ConvRot applies to int8_tensorwise only" -- quantize --format comfy_quant "$ckpt" "$tmp/out.safetensors" --weights-dtype float8_e4m3fn --convrot
expect "unknown filter" "unknown model filter 'sdxl'" -- quantize --format comfy_quant "$ckpt" "$tmp/out.safetensors" --filter sdxl
expect "folder as comfy_quant input" "flux-tiny" -- quantize --format comfy_quant "$m/flux-tiny" "$tmp/out.safetensors"
expect "already comfy_quant" "already a comfy_quant checkpoint" -- quantize --format comfy_quant "$tmp/int8.safetensors" "$tmp/out.safetensors"
cp "$tmp/int8.safetensors" "$tmp/out_exists.safetensors"
"$qdiff" quantize --format comfy_quant "$ckpt" "$tmp/out_exists.safetensors" -q >"$tmp/stdout" 2>"$tmp/stderr"
rc=$?
if [[ $rc -eq 2 ]] && grep -q "already exists" "$tmp/stderr" && cmp -s "$tmp/int8.safetensors" "$tmp/out_exists.safetensors" &&
   "$qdiff" quantize --format comfy_quant "$ckpt" "$tmp/out_exists.safetensors" -q --force --weights-dtype float8_e4m3fn >/dev/null 2>&1 &&
   ! cmp -s "$tmp/int8.safetensors" "$tmp/out_exists.safetensors"; then
  ok "existing output refused without --force, replaced with it"; else bad "--force: rc=$rc $(head -c 300 "$tmp/stderr")"; fi
rm -f "$tmp/out_exists.safetensors"

finish
