#!/usr/bin/env python3
"""Test tooling for generation-time LoRA (tests/cli_lora.sh): makes small random LoRAs for a
diffusers SD1.5 folder and, independently of qdiff, writes the folder a merge would give,
W' = W + scale * alpha/r * up @ down, so `qdiff generate --lora` can be compared with
`qdiff generate` on the merged folder. numpy only; safetensors read and written here.

  lora_reference.py make MODEL OUTDIR
      OUTDIR/kohya.safetensors   lora_unet_* / lora_te_* pairs (.alpha tensors): linear, 1x1 and
                                 3x3 conv layers of the UNet, q_proj / fc1 of the text encoder
      OUTDIR/peft/adapter_model.safetensors + adapter_config.json: base_model.model.<unet name>
                                 lora_A/lora_B, lora_alpha 6, r 4, rank_pattern {"to_k": 2}
      OUTDIR/nomatch.safetensors a LoRA naming no layer of the model
      OUTDIR/partial.safetensors one layer of the model and one it does not have
  lora_reference.py make-sdxl MODEL OUTDIR
      OUTDIR/sdxl_kohya_ldm.safetensors  an SDXL kohya LoRA as sd-scripts names it: every UNet
                                 matrix/conv weight under its ORIGINAL (LDM) module path with
                                 '.' -> '_' (lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q,
                                 ..._op, ..._2_conv, time_embed_0, label_emb_0_0, out_2), the LDM
                                 names from make_single_file.py's diffusers -> LDM map and the
                                 folder's unet/config.json; plus lora_te1_ / lora_te2_ layers
  lora_reference.py merge MODEL OUT LORA:SCALE...
      OUT: MODEL with each touched weight replaced by the merged float32 weight. An SDNQ layer
      (int8 weight with a float32 .scale, as `qdiff quantize --weights-dtype int8
      --group-size -1` writes it) is dequantized as int8 * scale first and stored dense.
"""
import json
import os
import re
import struct
import sys

import numpy as np

DT = {"F32": np.float32, "F16": np.float16, "I8": np.int8, "F64": np.float64, "I32": np.int32, "I64": np.int64,
      "U8": np.uint8}
DT_NAME = {np.dtype(v): k for k, v in DT.items()}


class BF16(np.ndarray):
    """bfloat16 bits kept as uint16 (numpy has no bfloat16): written back as BF16."""


def bf16_to_f32(a):
    return (np.asarray(a).astype(np.uint32) << 16).view(np.float32)


def st_read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", None)
    out = {}
    for name, h in header.items():
        a, b = h["data_offsets"]
        if h["dtype"] == "BF16":
            out[name] = np.frombuffer(data[a:b], dtype=np.uint16).reshape(h["shape"]).copy().view(BF16)
        else:
            out[name] = np.frombuffer(data[a:b], dtype=DT[h["dtype"]]).reshape(h["shape"]).copy()
    return out, meta


def st_write(path, tensors, meta=None):
    header, blobs, off = {}, [], 0
    if meta:
        header["__metadata__"] = meta
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        b = a.tobytes()
        dt = "BF16" if isinstance(tensors[name], BF16) and a.dtype == np.uint16 else DT_NAME[a.dtype]
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


WEIGHTS = {"unet": "diffusion_pytorch_model.safetensors", "text_encoder": "model.safetensors",
           "text_encoder_2": "model.safetensors", "transformer": "diffusion_pytorch_model.safetensors"}

# the layers the test LoRAs touch (every kind: linear, cross-attention, 1x1 and 3x3 conv)
UNET_KOHYA = ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
              "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
              "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
              "up_blocks.1.attentions.2.proj_in",
              "down_blocks.0.resnets.0.conv1",
              "up_blocks.0.resnets.1.conv1",
              "mid_block.resnets.0.time_emb_proj"]
TE_KOHYA = ["text_model.encoder.layers.0.self_attn.q_proj", "text_model.encoder.layers.1.mlp.fc1"]
UNET_PEFT = ["down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_v",
             "up_blocks.2.attentions.0.transformer_blocks.0.attn2.to_k",
             "mid_block.attentions.0.proj_in",
             "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj"]


def model_weights(model, comp):
    return st_read(os.path.join(model, comp, WEIGHTS[comp]))[0]


# FLUX: kohya LoRAs use BFL names; the diffusers folder has the layers separately. Each BFL
# layer -> (diffusers module, rows of the fused up it takes), rows given as (part, of parts)
# with D the hidden size: qkv = 3 x D, linear1 = 3 x D + mlp; the final adaLN is (shift, scale)
# in BFL and (scale, shift) in diffusers.
def bfl_targets(bfl, up_rows, d):
    m = re.fullmatch(r"double_blocks_(\d+)_(img|txt)_attn_qkv", bfl)
    if m:
        b, side = m.groups()
        names = ["to_q", "to_k", "to_v"] if side == "img" else ["add_q_proj", "add_k_proj", "add_v_proj"]
        return [("transformer_blocks.%s.attn.%s" % (b, n), slice(i * d, (i + 1) * d)) for i, n in enumerate(names)]
    m = re.fullmatch(r"single_blocks_(\d+)_linear1", bfl)
    if m:
        b = m.group(1)
        return [("single_transformer_blocks.%s.attn.to_q" % b, slice(0, d)),
                ("single_transformer_blocks.%s.attn.to_k" % b, slice(d, 2 * d)),
                ("single_transformer_blocks.%s.attn.to_v" % b, slice(2 * d, 3 * d)),
                ("single_transformer_blocks.%s.proj_mlp" % b, slice(3 * d, up_rows))]
    m = re.fullmatch(r"double_blocks_(\d+)_txt_mlp_0", bfl)
    if m:
        return [("transformer_blocks.%s.ff_context.net.0.proj" % m.group(1), slice(0, up_rows))]
    if bfl == "final_layer_adaLN_modulation_1":   # rows reordered: diffusers = [scale; shift]
        return [("norm_out.linear", np.r_[up_rows // 2:up_rows, 0:up_rows // 2])]
    raise SystemExit("lora_reference.py: no mapping for %s" % bfl)


FLUX_BFL = ["double_blocks_0_img_attn_qkv", "double_blocks_1_txt_attn_qkv", "single_blocks_0_linear1",
            "double_blocks_0_txt_mlp_0", "final_layer_adaLN_modulation_1"]


def make_flux(model, outdir):
    """OUTDIR/flux_bfl.safetensors: a kohya FLUX LoRA with BFL names (fused qkv, linear1)."""
    rng = np.random.default_rng(99)
    os.makedirs(outdir, exist_ok=True)
    tr = model_weights(model, "transformer")
    d = tr["transformer_blocks.0.attn.to_q.weight"].shape[0]
    mlp = tr["single_transformer_blocks.0.proj_mlp.weight"].shape[0]
    rows = {"double_blocks_0_img_attn_qkv": 3 * d, "double_blocks_1_txt_attn_qkv": 3 * d,
            "single_blocks_0_linear1": 3 * d + mlp, "double_blocks_0_txt_mlp_0": mlp,
            "final_layer_adaLN_modulation_1": 2 * d}
    t = {}
    for i, n in enumerate(FLUX_BFL):
        r = 3 + i % 2
        down, up = make_pair(rng, [rows[n], d], r)
        key = "lora_unet_" + n
        t[key + ".lora_down.weight"] = down.astype(np.float16)
        t[key + ".lora_up.weight"] = up.astype(np.float16)
        t[key + ".alpha"] = np.array(float(r + 1), dtype=np.float32)
    st_write(os.path.join(outdir, "flux_bfl.safetensors"), t)


def merge_flux(model, out, spec):
    path, _, s = spec.rpartition(":")
    scale = float(s)
    t, _ = st_read(path)
    os.makedirs(out)
    for entry in os.listdir(model):
        if entry != "transformer":
            os.symlink(os.path.abspath(os.path.join(model, entry)), os.path.join(out, entry))
    os.makedirs(os.path.join(out, "transformer"))
    os.symlink(os.path.abspath(os.path.join(model, "transformer", "config.json")),
               os.path.join(out, "transformer", "config.json"))
    tensors, meta = st_read(os.path.join(model, "transformer", WEIGHTS["transformer"]))
    d = tensors["transformer_blocks.0.attn.to_q.weight"].shape[0]
    for key in t:
        if not key.endswith(".lora_down.weight"):
            continue
        base = key[: -len(".lora_down.weight")]
        down, up = t[key].astype(np.float64), t[base + ".lora_up.weight"].astype(np.float64)
        factor = scale * float(t[base + ".alpha"]) / down.shape[0]
        for module, rows in bfl_targets(base[len("lora_unet_"):], up.shape[0], d):
            name = module + ".weight"
            w = tensors[name]
            w64 = (bf16_to_f32(w) if isinstance(w, BF16) else w.astype(np.float32)).astype(np.float64)
            tensors[name] = np.asarray(w64 + factor * (up[rows] @ down), dtype=np.float32)
    st_write(os.path.join(out, "transformer", WEIGHTS["transformer"]), tensors, meta)


def ldm_unet_names(model):
    """{diffusers UNet module: LDM module} of the folder's UNet, by make_single_file.py's own
    diffusers -> LDM map (independent of qdiff's C code) and the UNet's config.json."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import make_single_file
    with open(os.path.join(model, "unet", "config.json")) as f:
        cfg = json.load(f)
    w = model_weights(model, "unet")
    m = make_single_file.unet_to_ldm({k: k for k in w}, cfg)
    return {d[: -len(".weight")]: l[: -len(".weight")] for l, d in m.items() if d.endswith(".weight")}


SDXL_TE = [("lora_te1_", "text_encoder", "text_model.encoder.layers.0.self_attn.q_proj"),
           ("lora_te2_", "text_encoder_2", "text_model.encoder.layers.1.mlp.fc1"),
           ("lora_te2_", "text_encoder_2", "text_model.encoder.layers.0.self_attn.out_proj")]


def make_sdxl(model, outdir):
    rng = np.random.default_rng(4321)
    os.makedirs(outdir, exist_ok=True)
    unet = model_weights(model, "unet")
    ldm = ldm_unet_names(model)
    t = {}
    i = 0
    for mod in sorted(ldm):
        w = unet[mod + ".weight"]
        if w.ndim < 2:
            continue
        key = "lora_unet_" + ldm[mod].replace(".", "_")
        r = 2 + i % 3
        down, up = make_pair(rng, list(w.shape), r)
        t[key + ".lora_down.weight"] = (down * 0.5).astype(np.float16)
        t[key + ".lora_up.weight"] = (up * 0.5).astype(np.float16)
        t[key + ".alpha"] = np.array(1.0 + i % 4, dtype=np.float32)
        i += 1
    for prefix, comp, n in SDXL_TE:
        w = st_read(os.path.join(model, comp, WEIGHTS[comp]))[0][n + ".weight"]
        down, up = make_pair(rng, list(w.shape), 3)
        key = prefix + n.replace(".", "_")
        t[key + ".lora_down.weight"] = down.astype(np.float16)
        t[key + ".lora_up.weight"] = up.astype(np.float16)
        t[key + ".alpha"] = np.array(2.0, dtype=np.float32)
    st_write(os.path.join(outdir, "sdxl_kohya_ldm.safetensors"), t)


def make_pair(rng, shape, r):
    cout, cin = shape[0], shape[1]
    k = shape[2:] if len(shape) == 4 else []
    down = rng.standard_normal([r, cin] + k).astype(np.float32) * 0.3
    up = rng.standard_normal([cout, r] + ([1, 1] if k else [])).astype(np.float32) * 0.3
    return down, up


def make(model, outdir):
    rng = np.random.default_rng(1234)
    os.makedirs(os.path.join(outdir, "peft"), exist_ok=True)
    unet, te = model_weights(model, "unet"), model_weights(model, "text_encoder")
    t = {}
    for comp, names, prefix in (("unet", UNET_KOHYA, "lora_unet_"), ("text_encoder", TE_KOHYA, "lora_te_")):
        w = unet if comp == "unet" else te
        for i, n in enumerate(names):
            key = prefix + n.replace(".", "_")
            r = 4 if i % 2 == 0 else 3
            down, up = make_pair(rng, list(w[n + ".weight"].shape), r)
            t[key + ".lora_down.weight"] = down.astype(np.float16)
            t[key + ".lora_up.weight"] = up.astype(np.float16)
            t[key + ".alpha"] = np.array(2.0 + i, dtype=np.float32)
    st_write(os.path.join(outdir, "kohya.safetensors"), t)
    t = {}
    for n in UNET_PEFT:
        r = 2 if n.endswith("to_k") else 4
        down, up = make_pair(rng, list(unet[n + ".weight"].shape), r)
        t["base_model.model." + n + ".lora_A.weight"] = down
        t["base_model.model." + n + ".lora_B.weight"] = up
    st_write(os.path.join(outdir, "peft", "adapter_model.safetensors"), t)
    cfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 6, "rank_pattern": {"to_k": 2}, "alpha_pattern": {},
           "use_rslora": False, "target_modules": ["to_v", "to_k", "proj_in", "proj"]}
    with open(os.path.join(outdir, "peft", "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    down, up = make_pair(rng, [8, 8], 2)
    st_write(os.path.join(outdir, "nomatch.safetensors"),
             {"lora_unet_no_such_layer.lora_down.weight": down, "lora_unet_no_such_layer.lora_up.weight": up})
    n = UNET_KOHYA[0]
    d2, u2 = make_pair(rng, list(unet[n + ".weight"].shape), 2)
    st_write(os.path.join(outdir, "partial.safetensors"),
             {"lora_unet_no_such_layer.lora_down.weight": down, "lora_unet_no_such_layer.lora_up.weight": up,
              "lora_unet_" + n.replace(".", "_") + ".lora_down.weight": d2,
              "lora_unet_" + n.replace(".", "_") + ".lora_up.weight": u2})


def peft_value(patterns, module, default):
    """PEFT's get_pattern_key: the first key matching the module name as (.*\\.)?(KEY)$."""
    for key, v in patterns.items():
        if re.match(r"(.*\.)?(%s)$" % key, module):
            return v
    return default


def deltas(path, scale):
    """{(component, module): float64 delta} of one LoRA file, by this script's own reading."""
    t, _ = st_read(path)
    cfg = None
    cfg_path = os.path.join(os.path.dirname(path), "adapter_config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            cfg = json.load(f)
    out = {}
    for key in t:
        if key.endswith(".lora_down.weight"):
            base = key[: -len(".lora_down.weight")]
            down, up = t[key], t[base + ".lora_up.weight"]
            r = down.shape[0]
            alpha = float(t[base + ".alpha"]) if base + ".alpha" in t else r
            factor = alpha / r
            prefix = re.match(r"lora_(unet|te1|te2|te)_", base).group(0)
            comp = {"lora_unet_": "unet", "lora_te2_": "text_encoder_2"}.get(prefix, "text_encoder")
            flat = base[len(prefix):]
            module = ("k", flat)   # kohya: matched by the underscore spelling below
        elif key.endswith(".lora_A.weight"):
            base = key[: -len(".lora_A.weight")]
            down, up = t[key], t[base + ".lora_B.weight"]
            module_name = base[len("base_model.model."):]
            r = peft_value(cfg.get("rank_pattern") or {}, module_name, cfg["r"])
            alpha = peft_value(cfg.get("alpha_pattern") or {}, module_name, cfg["lora_alpha"])
            assert r == down.shape[0], (module_name, r, down.shape)
            factor = alpha / (np.sqrt(r) if cfg.get("use_rslora") else r)
            comp, module = "unet", ("d", module_name)
        else:
            continue
        d = up.reshape(up.shape[0], -1).astype(np.float64) @ down.reshape(down.shape[0], -1).astype(np.float64)
        out.setdefault((comp, module), []).append(scale * factor * d)
    return out


def merge(model, out, specs):
    os.makedirs(out)
    for entry in os.listdir(model):
        if entry not in WEIGHTS:
            os.symlink(os.path.abspath(os.path.join(model, entry)), os.path.join(out, entry))
    alld = {}
    for spec in specs:
        path, _, s = spec.rpartition(":")
        for k, v in deltas(path, float(s)).items():
            alld.setdefault(k, []).extend(v)
    used = set()
    ldm = ldm_unet_names(model) if os.path.isdir(os.path.join(model, "unet")) else {}
    for comp, fname in WEIGHTS.items():
        if comp == "transformer" or not os.path.isdir(os.path.join(model, comp)):   # merge-flux; SD1.5: no text_encoder_2
            continue
        cdir = os.path.join(out, comp)
        os.makedirs(cdir)
        for entry in os.listdir(os.path.join(model, comp)):
            if entry != fname:
                os.symlink(os.path.abspath(os.path.join(model, comp, entry)), os.path.join(cdir, entry))
        tensors, meta = st_read(os.path.join(model, comp, fname))
        for name in list(tensors):
            if not name.endswith(".weight"):
                continue
            mod = name[: -len(".weight")]
            # kohya: the diffusers module with '_', or (SDXL, unet) the LDM module path with '_'
            keys = [(comp, ("d", mod)), (comp, ("k", mod.replace(".", "_")))]
            if comp == "unet" and mod in ldm:
                keys.append((comp, ("k", ldm[mod].replace(".", "_"))))
            ds = [d for k in keys for d in alld.get(k, [])]
            if not ds:
                continue
            used.update(k for k in keys if k in alld)
            w = tensors[name]
            if mod + ".scale" in tensors:   # SDNQ int8, row-wise (conv: per output and tap)
                sc = tensors.pop(mod + ".scale")
                if w.ndim == 2 and sc.shape == (1, w.shape[1]) and sc.shape[1] != 1:
                    w = (w.astype(np.float32) * sc).T   # quantized-matmul layout: [in, out] codes, [1, out] scales
                else:
                    w = w.astype(np.float32) * sc
                tensors.pop(mod + ".zero_point", None)
            w64 = w.astype(np.float32).astype(np.float64)
            for d in ds:
                w64 = w64 + d.reshape(w64.shape)
            tensors[name] = w64.astype(np.float32)
        st_write(os.path.join(cdir, fname), tensors, meta)
    missing = set(alld) - used
    if missing:
        sys.exit("lora_reference.py: LoRA layers matching no weight: %s" % sorted(missing))


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "make-sdxl":
        make_sdxl(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "make-flux":
        make_flux(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 5 and sys.argv[1] == "merge-flux":
        merge_flux(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) >= 5 and sys.argv[1] == "merge":
        merge(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        sys.exit(__doc__)
