#!/usr/bin/python3
"""Write a single-file checkpoint with the ORIGINAL key names from a diffusers folder.

The reference for qdiff's single-file conversion tests: the inverse mapping
(diffusers -> original) written independently of qdiff's C code, after the public
diffusers scripts convert_diffusers_to_original_stable_diffusion.py /
convert_diffusers_to_original_sdxl.py (replacement tables, q/k/v concatenated into
OpenCLIP's in_proj, text_projection transposed, the VAE's attention Linear weights
as 1x1 convs), the BFL FLUX.1 names (q/k/v -> qkv, single blocks' q/k/v/mlp ->
linear1, norm_out's scale/shift halves back to shift/scale) and the Stability SD3 /
SD3.5 MMDiT names (the inverse of diffusers' convert_sd3_to_diffusers: q/k/v ->
joint_blocks.N.{x,context}_block.attn.qkv, norm_out's and the last (pre-only)
context block's modulation halves back to shift/scale; SD3.5-medium's attn2 q/k/v ->
x_block.attn2.qkv).

Python standard library only (the tensors are moved as bytes: every conversion is a
rename, a reshape, a row concatenation, a half swap or a 2-D transpose).

usage: make_single_file.py FAMILY DIFFUSERS_DIR OUT.safetensors [options]
  FAMILY            sd1 | sdxl | flux | sd3
  --denoiser-only   only the UNet / transformer (ComfyUI models/diffusion_models)
  --no-prefix       denoiser keys without "model.diffusion_model."
  --drop KEY        leave out this (original) key (repeatable; for bad-input tests)
  --rename OLD=NEW  store key OLD as NEW (repeatable; for bad-input tests)
  --extra           also write the buffers real checkpoints carry that diffusers drops
                    (LDM schedule, text position_ids, OpenCLIP logit_scale)
       make_single_file.py make-dual SD3_DIR OUT_DIR BLOCK
                    a copy of a diffusers SD3.5 folder whose block BLOCK has dual
                    attention (attn2 + 9 x D norm1.linear, SD3.5-medium style)
"""
import json
import os
import re
import struct
import sys

ES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "U8": 1}


def read_st(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        out[k] = (v["dtype"], list(v["shape"]), data[b:e])
    return out


def write_st(path, tensors):
    header, blobs, off = {}, [], 0
    for k in sorted(tensors):
        dt, shape, raw = tensors[k]
        header[k] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def cat_rows(parts):
    """Concatenate tensors along dim 0 (row-major: the bytes follow each other)."""
    dt = parts[0][0]
    rows = sum(p[1][0] for p in parts)
    assert all(p[0] == dt and p[1][1:] == parts[0][1][1:] for p in parts)
    return (dt, [rows] + parts[0][1][1:], b"".join(p[2] for p in parts))


def swap_halves(t):
    dt, shape, raw = t
    h = len(raw) // 2
    return (dt, shape, raw[h:] + raw[:h])


def transpose2d(t):
    dt, (a, b), raw = t
    es = ES[dt]
    out = bytearray(len(raw))
    for i in range(a):
        for j in range(b):
            out[(j * a + i) * es:(j * a + i + 1) * es] = raw[(i * b + j) * es:(i * b + j + 1) * es]
    return (dt, [b, a], bytes(out))


def load_dir(d, comp, name):
    return read_st("%s/%s/%s" % (d, comp, name))


def config(d, comp):
    with open("%s/%s/config.json" % (d, comp)) as f:
        return json.load(f)


# ---- SD UNet (diffusers -> LDM), after convert_diffusers_to_original_stable_diffusion.py ----

def unet_to_ldm(sd, cfg):
    L = cfg["layers_per_block"]
    nb = len(cfg["block_out_channels"])
    up_attn = [t.startswith("CrossAttn") for t in cfg["up_block_types"]]
    conv_map = [("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
                ("label_emb.0.0.", "add_embedding.linear_1."), ("label_emb.0.2.", "add_embedding.linear_2."),
                ("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out.")]
    resnet_map = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"),
                  ("out_layers.3", "conv2"), ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]
    layer_map = []
    for i in range(nb):
        for j in range(L):
            layer_map.append(("input_blocks.%d.0." % ((L + 1) * i + j + 1), "down_blocks.%d.resnets.%d." % (i, j)))
            layer_map.append(("input_blocks.%d.1." % ((L + 1) * i + j + 1), "down_blocks.%d.attentions.%d." % (i, j)))
        for j in range(L + 1):
            layer_map.append(("output_blocks.%d.0." % ((L + 1) * i + j), "up_blocks.%d.resnets.%d." % (i, j)))
            layer_map.append(("output_blocks.%d.1." % ((L + 1) * i + j), "up_blocks.%d.attentions.%d." % (i, j)))
        if i < nb - 1:
            layer_map.append(("input_blocks.%d.0.op." % ((L + 1) * (i + 1)), "down_blocks.%d.downsamplers.0.conv." % i))
            layer_map.append(("output_blocks.%d.%d." % ((L + 1) * i + L, 2 if up_attn[i] else 1),
                              "up_blocks.%d.upsamplers.0." % i))
    layer_map.append(("middle_block.1.", "mid_block.attentions.0."))
    for j in range(2):
        layer_map.append(("middle_block.%d." % (2 * j), "mid_block.resnets.%d." % j))
    out = {}
    for k, t in sd.items():
        v = k
        for s, h in conv_map:
            if v.startswith(h):
                v = s + v[len(h):]
        if "resnets" in v:
            for s, h in resnet_map:
                v = v.replace(h, s)
        for s, h in layer_map:
            v = v.replace(h, s)
        out[v] = t
    return out


# ---- VAE (diffusers -> LDM) ----

def vae_to_ldm(sd, cfg):
    nb = len(cfg["block_out_channels"])
    L = cfg["layers_per_block"]
    m = [("nin_shortcut", "conv_shortcut"), ("norm_out", "conv_norm_out"), ("mid.attn_1.", "mid_block.attentions.0.")]
    for i in range(nb):
        for j in range(L):
            m.append(("encoder.down.%d.block.%d." % (i, j), "encoder.down_blocks.%d.resnets.%d." % (i, j)))
        if i < nb - 1:
            m.append(("down.%d.downsample." % i, "down_blocks.%d.downsamplers.0." % i))
            m.append(("up.%d.upsample." % (nb - 1 - i), "up_blocks.%d.upsamplers.0." % i))
        for j in range(L + 1):
            m.append(("decoder.up.%d.block.%d." % (nb - 1 - i, j), "decoder.up_blocks.%d.resnets.%d." % (i, j)))
    for i in range(2):
        m.append(("mid.block_%d." % (i + 1), "mid_block.resnets.%d." % i))
    attn = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]
    out = {}
    for k, t in sd.items():
        v = k
        for s, h in m:
            v = v.replace(h, s)
        if "attentions" in k:
            for s, h in attn:
                v = v.replace(h, s)
            if re.search(r"\.(q|k|v|proj_out)\.weight$", v):
                dt, shape, raw = t
                t = (dt, shape + [1, 1], raw)   # Linear -> 1x1 conv
        out[v] = t
    return out


# ---- OpenCLIP (diffusers CLIPTextModelWithProjection -> SDXL's embedders.1.model) ----

def open_clip_from(sd):
    out = {}
    qkv = {}
    for k, t in sd.items():
        if k == "text_projection.weight":
            out["text_projection"] = transpose2d(t)
            continue
        if k == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = t
            continue
        if k == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = t
            continue
        if k.startswith("text_model.final_layer_norm."):
            out["ln_final." + k.split(".")[-1]] = t
            continue
        mm = re.match(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)$", k)
        if mm:
            qkv.setdefault((mm.group(1), mm.group(3)), {})[mm.group(2)] = t
            continue
        v = k.replace("text_model.encoder.layers.", "transformer.resblocks.")
        for s, h in [("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), (".c_fc.", ".fc1."), (".c_proj.", ".fc2."),
                     (".attn", ".self_attn")]:
            v = v.replace(h, s)
        out[v] = t
    for (n, kind), parts in qkv.items():
        out["transformer.resblocks.%s.attn.in_proj_%s" % (n, kind)] = cat_rows([parts["q"], parts["k"], parts["v"]])
    return out


# ---- FLUX (diffusers -> BFL) ----

def flux_to_bfl(sd, cfg):
    out = {}
    top = {"x_embedder.": "img_in.", "context_embedder.": "txt_in.",
           "time_text_embed.timestep_embedder.linear_1.": "time_in.in_layer.",
           "time_text_embed.timestep_embedder.linear_2.": "time_in.out_layer.",
           "time_text_embed.text_embedder.linear_1.": "vector_in.in_layer.",
           "time_text_embed.text_embedder.linear_2.": "vector_in.out_layer.",
           "time_text_embed.guidance_embedder.linear_1.": "guidance_in.in_layer.",
           "time_text_embed.guidance_embedder.linear_2.": "guidance_in.out_layer.",
           "proj_out.": "final_layer.linear."}
    for h, b in top.items():
        for s in ("weight", "bias"):
            if h + s in sd:
                out[b + s] = sd[h + s]
    for s in ("weight", "bias"):
        out["final_layer.adaLN_modulation.1." + s] = swap_halves(sd["norm_out.linear." + s])
    dbl = {"norm1.linear.": "img_mod.lin.", "norm1_context.linear.": "txt_mod.lin.",
           "attn.to_out.0.": "img_attn.proj.", "attn.to_add_out.": "txt_attn.proj.",
           "ff.net.0.proj.": "img_mlp.0.", "ff.net.2.": "img_mlp.2.",
           "ff_context.net.0.proj.": "txt_mlp.0.", "ff_context.net.2.": "txt_mlp.2."}
    for n in range(cfg["num_layers"]):
        p, q = "transformer_blocks.%d." % n, "double_blocks.%d." % n
        for h, b in dbl.items():
            for s in ("weight", "bias"):
                out[q + b + s] = sd[p + h + s]
        for s in ("weight", "bias"):
            out[q + "img_attn.qkv." + s] = cat_rows([sd[p + "attn.to_%s.%s" % (x, s)] for x in "qkv"])
            out[q + "txt_attn.qkv." + s] = cat_rows([sd[p + "attn.add_%s_proj.%s" % (x, s)] for x in "qkv"])
        out[q + "img_attn.norm.query_norm.scale"] = sd[p + "attn.norm_q.weight"]
        out[q + "img_attn.norm.key_norm.scale"] = sd[p + "attn.norm_k.weight"]
        out[q + "txt_attn.norm.query_norm.scale"] = sd[p + "attn.norm_added_q.weight"]
        out[q + "txt_attn.norm.key_norm.scale"] = sd[p + "attn.norm_added_k.weight"]
    for n in range(cfg["num_single_layers"]):
        p, q = "single_transformer_blocks.%d." % n, "single_blocks.%d." % n
        for s in ("weight", "bias"):
            out[q + "linear1." + s] = cat_rows([sd[p + "attn.to_q." + s], sd[p + "attn.to_k." + s],
                                                sd[p + "attn.to_v." + s], sd[p + "proj_mlp." + s]])
            out[q + "linear2." + s] = sd[p + "proj_out." + s]
            out[q + "modulation.lin." + s] = sd[p + "norm.linear." + s]
        out[q + "norm.query_norm.scale"] = sd[p + "attn.norm_q.weight"]
        out[q + "norm.key_norm.scale"] = sd[p + "attn.norm_k.weight"]
    return out


# ---- SD3 / SD3.5 (diffusers SD3Transformer2DModel -> Stability MMDiT) ----

def sd3_to_mmdit(sd, cfg):
    out = {}
    top = {"pos_embed.proj.": "x_embedder.proj.", "context_embedder.": "context_embedder.",
           "time_text_embed.timestep_embedder.linear_1.": "t_embedder.mlp.0.",
           "time_text_embed.timestep_embedder.linear_2.": "t_embedder.mlp.2.",
           "time_text_embed.text_embedder.linear_1.": "y_embedder.mlp.0.",
           "time_text_embed.text_embedder.linear_2.": "y_embedder.mlp.2.",
           "proj_out.": "final_layer.linear."}
    for h, b in top.items():
        for s in ("weight", "bias"):
            out[b + s] = sd[h + s]
    out["pos_embed"] = sd["pos_embed.pos_embed"]
    for s in ("weight", "bias"):
        out["final_layer.adaLN_modulation.1." + s] = swap_halves(sd["norm_out.linear." + s])
    L = cfg["num_layers"]
    dual = set(cfg.get("dual_attention_layers") or [])
    ren = {"attn.to_out.0.": "x_block.attn.proj.", "attn.to_add_out.": "context_block.attn.proj.",
           "norm1.linear.": "x_block.adaLN_modulation.1.",
           "ff.net.0.proj.": "x_block.mlp.fc1.", "ff.net.2.": "x_block.mlp.fc2.",
           "ff_context.net.0.proj.": "context_block.mlp.fc1.", "ff_context.net.2.": "context_block.mlp.fc2."}
    norms = {"attn.norm_q.weight": "x_block.attn.ln_q.weight", "attn.norm_k.weight": "x_block.attn.ln_k.weight",
             "attn.norm_added_q.weight": "context_block.attn.ln_q.weight",
             "attn.norm_added_k.weight": "context_block.attn.ln_k.weight"}
    for n in range(L):
        p, q = "transformer_blocks.%d." % n, "joint_blocks.%d." % n
        last = n == L - 1
        for h, b in ren.items():
            for s in ("weight", "bias"):
                if p + h + s in sd:           # the last block's context side has no proj / MLP
                    out[q + b + s] = sd[p + h + s]
        for h, b in norms.items():
            if p + h in sd:
                out[q + b] = sd[p + h]
        for s in ("weight", "bias"):
            c = sd[p + "norm1_context.linear." + s]
            out[q + "context_block.adaLN_modulation.1." + s] = swap_halves(c) if last else c
            out[q + "x_block.attn.qkv." + s] = cat_rows([sd[p + "attn.to_%s.%s" % (x, s)] for x in "qkv"])
            out[q + "context_block.attn.qkv." + s] = cat_rows([sd[p + "attn.add_%s_proj.%s" % (x, s)] for x in "qkv"])
        if n in dual:   # SD3.5-medium: the image stream's second attention
            for s in ("weight", "bias"):
                out[q + "x_block.attn2.qkv." + s] = cat_rows([sd[p + "attn2.to_%s.%s" % (x, s)] for x in "qkv"])
                out[q + "x_block.attn2.proj." + s] = sd[p + "attn2.to_out.0." + s]
            for x in "qk":
                if p + "attn2.norm_%s.weight" % x in sd:
                    out[q + "x_block.attn2.ln_%s.weight" % x] = sd[p + "attn2.norm_%s.weight" % x]
    return out


def make_dual(src, dst, block):
    """A diffusers SD3.5 folder whose block `block` has dual attention (SD3.5-medium
    style): src's other files linked, its transformer given attn2 (copies of the block's
    attn q/k/v/out and q/k norms) and a 9 x D norm1.linear (the 6 x D one plus its first
    3 x D rows), with dual_attention_layers = [block] in the config."""
    os.makedirs(dst)
    for e in os.listdir(src):
        if e != "transformer":
            os.symlink(os.path.abspath(os.path.join(src, e)), os.path.join(dst, e))
    W = "diffusion_pytorch_model.safetensors"
    sd = load_dir(src, "transformer", W)
    cfg = config(src, "transformer")
    p = "transformer_blocks.%d." % block
    for x in ("to_q", "to_k", "to_v", "to_out.0"):
        for s in ("weight", "bias"):
            sd[p + "attn2.%s.%s" % (x, s)] = sd[p + "attn.%s.%s" % (x, s)]
    for x in "qk":
        if p + "attn.norm_%s.weight" % x in sd:
            sd[p + "attn2.norm_%s.weight" % x] = sd[p + "attn.norm_%s.weight" % x]
    for s in ("weight", "bias"):
        dt, shape, raw = sd[p + "norm1.linear." + s]
        half = len(raw) // 2   # the first 3 x D of 6 x D rows
        sd[p + "norm1.linear." + s] = (dt, [shape[0] * 3 // 2] + shape[1:], raw + raw[:half])
    cfg["dual_attention_layers"] = [block]
    os.makedirs(os.path.join(dst, "transformer"))
    write_st(os.path.join(dst, "transformer", W), sd)
    with open(os.path.join(dst, "transformer", "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def prefixed(prefix, sd):
    return {prefix + k: v for k, v in sd.items()}


def main(argv):
    args = [a for a in argv[1:]]
    if len(args) == 4 and args[0] == "make-dual":   # make-dual SRC_SD3_DIR DST_DIR BLOCK
        make_dual(args[1], args[2], int(args[3]))
        return 0
    drops, renames, opts, pos = [], [], set(), []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--drop":
            drops.append(args[i + 1])
            i += 2
            continue
        if a == "--rename":
            renames.append(args[i + 1].split("=", 1))
            i += 2
            continue
        if a.startswith("--"):
            opts.add(a)
        else:
            pos.append(a)
        i += 1
    if len(pos) != 3 or pos[0] not in ("sd1", "sdxl", "flux", "sd3"):
        print(__doc__, file=sys.stderr)
        return 2
    fam, d, outp = pos
    dp = "" if "--no-prefix" in opts else "model.diffusion_model."
    only = "--denoiser-only" in opts
    extra = "--extra" in opts
    W = "diffusion_pytorch_model.safetensors"
    out = {}
    if fam in ("sd1", "sdxl"):
        out.update(prefixed(dp, unet_to_ldm(load_dir(d, "unet", W), config(d, "unet"))))
        if not only:
            out.update(prefixed("first_stage_model.", vae_to_ldm(load_dir(d, "vae", W), config(d, "vae"))))
            te = load_dir(d, "text_encoder", "model.safetensors")
            if extra:
                n = te["text_model.embeddings.position_embedding.weight"][1][0]
                te["text_model.embeddings.position_ids"] = ("I64", [1, n], b"".join(struct.pack("<q", j) for j in range(n)))
            if fam == "sd1":
                out.update(prefixed("cond_stage_model.transformer.", te))
            else:
                out.update(prefixed("conditioner.embedders.0.transformer.", te))
                oc = open_clip_from(load_dir(d, "text_encoder_2", "model.safetensors"))
                if extra:
                    oc["logit_scale"] = ("F32", [], struct.pack("<f", 4.6052))
                out.update(prefixed("conditioner.embedders.1.model.", oc))
            if extra:
                out["alphas_cumprod"] = ("F32", [4], struct.pack("<4f", 0.9, 0.8, 0.7, 0.6))
    elif fam == "sd3":
        out.update(prefixed(dp, sd3_to_mmdit(load_dir(d, "transformer", W), config(d, "transformer"))))
        if not only:   # Stability's / ComfyUI's full SD3 checkpoints
            out.update(prefixed("first_stage_model.", vae_to_ldm(load_dir(d, "vae", W), config(d, "vae"))))
            out.update(prefixed("text_encoders.clip_l.transformer.", load_dir(d, "text_encoder", "model.safetensors")))
            out.update(prefixed("text_encoders.clip_g.transformer.", load_dir(d, "text_encoder_2", "model.safetensors")))
            out.update(prefixed("text_encoders.t5xxl.transformer.", load_dir(d, "text_encoder_3", "model.safetensors")))
    else:
        out.update(prefixed(dp, flux_to_bfl(load_dir(d, "transformer", W), config(d, "transformer"))))
        if not only:
            out.update(prefixed("vae.", vae_to_ldm(load_dir(d, "vae", W), config(d, "vae"))))
            out.update(prefixed("text_encoders.clip_l.transformer.", load_dir(d, "text_encoder", "model.safetensors")))
            out.update(prefixed("text_encoders.t5xxl.transformer.", load_dir(d, "text_encoder_2", "model.safetensors")))
    for k in drops:
        if k not in out:
            print("make_single_file: no key %s to drop" % k, file=sys.stderr)
            return 2
        del out[k]
    for old, new in renames:
        if old not in out:
            print("make_single_file: no key %s to rename" % old, file=sys.stderr)
            return 2
        out[new] = out.pop(old)
    write_st(outp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
