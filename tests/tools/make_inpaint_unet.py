#!/usr/bin/env python3
"""Derive test models from a tiny SD1.5 diffusers folder (Python standard library only).

  make_inpaint_unet.py SRC DST concat [V]
      DST = SRC with an inpainting UNet: in_channels 9 (latents + mask + masked-image
      latents), conv_in.weight widened with zeros for the 5 new input channels, except
      (V given) the centre tap of the mask channel (input 4) = V for every output channel,
      so that an all-ones mask adds exactly V to conv_in's output everywhere (the 3x3
      zero padding never reaches a centre tap).
  make_inpaint_unet.py SRC DST bias V
      DST = SRC with conv_in.bias + V: the 4-channel UNet the `concat V` one equals
      under an all-ones mask.
conv_in.weight and conv_in.bias are written as F32 in both, so V and bias + V are
exact in float32 (bias + V rounded once).
  make_inpaint_unet.py SRC DST wide-out
      DST = SRC with a UNet of out_channels 8 (conv_out widened with zero rows, config to
      match): a consistent folder whose denoiser output does not fit the latents, which
      qdiff must refuse at open.
Other components are symlinked."""
import json, os, struct, sys

F = {'F16': ('e', 2), 'F32': ('f', 4), 'BF16': (None, 2)}


def read_st(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        head = json.loads(f.read(n))
        data = f.read()
    return head, data


def to_f32(t, raw):
    code, size = F[t['dtype']]
    cnt = len(raw) // size
    if code is None:  # bf16: the high half of a float32
        return list(struct.unpack('<%df' % cnt, b''.join(b'\0\0' + raw[i:i + 2] for i in range(0, len(raw), 2))))
    return list(struct.unpack('<%d%s' % (cnt, code), raw))


def main():
    src, dst, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    v = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    os.makedirs(os.path.join(dst, 'unet'), exist_ok=True)
    for name in os.listdir(src):
        if name not in ('unet', 'model_index.json') and not os.path.exists(os.path.join(dst, name)):
            os.symlink(os.path.abspath(os.path.join(src, name)), os.path.join(dst, name))
    index = json.load(open(os.path.join(src, 'model_index.json')))
    cfg = json.load(open(os.path.join(src, 'unet', 'config.json')))
    if mode == 'concat':
        index['_class_name'] = 'StableDiffusionInpaintPipeline'
        cfg['in_channels'] = 9
    if mode == 'wide-out':
        cfg['out_channels'] = 8
    json.dump(index, open(os.path.join(dst, 'model_index.json'), 'w'), indent=1)
    json.dump(cfg, open(os.path.join(dst, 'unet', 'config.json'), 'w'), indent=1)

    head, data = read_st(os.path.join(src, 'unet', 'diffusion_pytorch_model.safetensors'))
    meta = head.pop('__metadata__', None)
    tensors = {}
    for name, t in head.items():
        raw = data[t['data_offsets'][0]:t['data_offsets'][1]]
        tensors[name] = (t['dtype'], list(t['shape']), raw)
    _, wshape, wraw = tensors['conv_in.weight']
    w = to_f32(head['conv_in.weight'], wraw)
    b = to_f32(head['conv_in.bias'], tensors['conv_in.bias'][2])
    o, i, kh, kw = wshape
    if mode == 'concat':
        nw = []
        for oc in range(o):
            nw += w[oc * i * kh * kw:(oc + 1) * i * kh * kw]
            extra = [0.0] * (5 * kh * kw)
            extra[(kh // 2) * kw + kw // 2] = v  # input channel 4 (the mask), centre tap
            nw += extra
        tensors['conv_in.weight'] = ('F32', [o, 9, kh, kw], struct.pack('<%df' % len(nw), *nw))
        tensors['conv_in.bias'] = ('F32', [o], struct.pack('<%df' % o, *b))
    elif mode == 'bias':
        tensors['conv_in.weight'] = ('F32', wshape, struct.pack('<%df' % len(w), *w))
        tensors['conv_in.bias'] = ('F32', [o], struct.pack('<%df' % o, *[x + v for x in b]))
    elif mode == 'wide-out':
        for name in ('conv_out.weight', 'conv_out.bias'):
            dt, shape, raw = tensors[name]
            vals = to_f32(head[name], raw)
            vals += [0.0] * len(vals)   # out channels 4..7: zero rows
            tensors[name] = ('F32', [2 * shape[0]] + shape[1:], struct.pack('<%df' % len(vals), *vals))
    else:
        sys.exit('mode must be concat, bias or wide-out')

    out_head, blobs, off = {}, [], 0
    if meta is not None:
        out_head['__metadata__'] = meta
    for name in sorted(tensors):
        dt, shape, raw = tensors[name]
        out_head[name] = {'dtype': dt, 'shape': shape, 'data_offsets': [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hb = json.dumps(out_head, separators=(',', ':')).encode()
    hb += b' ' * ((8 - len(hb) % 8) % 8)
    path = os.path.join(dst, 'unet', 'diffusion_pytorch_model.safetensors')
    with open(path + '.tmp', 'wb') as f:
        f.write(struct.pack('<Q', len(hb)) + hb + b''.join(blobs))
    os.replace(path + '.tmp', path)


main()
