"""The ComfyUI node pack (bindings/comfyui) without ComfyUI: imported the way ComfyUI
imports a cloned custom node, run on fixture models with Debian's torch and numpy.

References are independent of the node: the PNG `qdiff generate` writes for the same
parameters (pixels equal: round(IMAGE*255) == PNG), the diffusers goldens' latents
(relative L2 <= 1e-3, the pipeline tolerance of tests/test_pipeline.c), the CLI's
sampler list and error messages. ComfyUI's comfy.utils / comfy.model_management /
folder_paths are replaced by small fakes that record what the node does with them.

env: QDIFF_LIB (libqdiff.so under test), QD_QDIFF (the qdiff CLI), QD_FIXTURES.
"""
import ctypes
import importlib.util
import json
import os
import struct
import subprocess
import sys
import tempfile
import types

try:
    import numpy as np
    import torch
    from PIL import Image
except ImportError as e:   # a missing dependency fails the test: it never skips
    print(f"FAIL: {e}: the ComfyUI node test needs Debian's python3-torch, python3-numpy and python3-pil "
          "(scripts/install-deps.sh installs them)")
    sys.exit(1)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FX = os.environ.get("QD_FIXTURES", os.path.join(REPO, "tests", "fixtures"))
QDIFF = os.environ["QD_QDIFF"]
LIB = os.environ["QDIFF_LIB"]
TMP = tempfile.mkdtemp(prefix="qdiff-comfy-")

passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {what}")
    else:
        failed += 1
        print(f"FAIL {what}")
    return cond


def expect_raises(exc_type, fn, what):
    try:
        fn()
    except exc_type as e:
        check(True, f"{what}: {type(e).__name__}: {e}")
        return e
    except BaseException as e:   # noqa: B036
        check(False, f"{what}: raised {type(e).__name__}: {e}, wanted {exc_type.__name__}")
        return None
    check(False, f"{what}: no exception")
    return None


# ---- independent readers ---------------------------------------------------------

def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "U8": np.uint8}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=dtypes[t["dtype"]]).reshape(t["shape"])
    return out


def read_png(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def rel_l2(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def unpack_golden_flux(packed, height, width):
    """diffusers' FluxPipeline._unpack_latents, written here from the packing rule
    (token (i, j) holds the 2x2 patch at rows 2i..2i+1, cols 2j..2j+1, channel-major)."""
    b, _, c4 = packed.shape
    c, h, w = c4 // 4, height // 8, width // 8
    out = np.zeros((b, c, h, w), np.float32)
    for i in range(h // 2):
        for j in range(w // 2):
            patch = packed[:, i * (w // 2) + j, :].reshape(b, c, 2, 2)
            out[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2] = patch
    return out


def vae_factors(model_dir):
    with open(os.path.join(model_dir, "vae", "config.json")) as f:
        cfg = json.load(f)
    return cfg["scaling_factor"], cfg.get("shift_factor") or 0.0


def cli(args):
    return subprocess.run([QDIFF] + args, capture_output=True, text=True)


# ---- fake ComfyUI modules ------------------------------------------------------------

class FakeProgressBar:
    instances = []

    def __init__(self, total):
        self.total, self.calls = total, []
        FakeProgressBar.instances.append(self)

    def update_absolute(self, value, total=None, preview=None):
        self.calls.append((value, total, preview))
        if FakeMM.on_update:
            FakeMM.on_update(value)


class FakeInterrupt(Exception):
    pass


class FakeMM:
    flag = False
    on_update = None
    cleared = 0


def fake_processing_interrupted():
    return FakeMM.flag


def fake_throw():
    if FakeMM.flag:
        FakeMM.flag = False
        FakeMM.cleared += 1
        raise FakeInterrupt("Processing interrupted")


def install_fake_comfy():
    comfy = types.ModuleType("comfy")
    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = FakeProgressBar
    mm = types.ModuleType("comfy.model_management")
    mm.processing_interrupted = fake_processing_interrupted
    mm.throw_exception_if_processing_interrupted = fake_throw
    mm.InterruptProcessingException = FakeInterrupt
    comfy.utils, comfy.model_management = utils, mm
    sys.modules.update({"comfy": comfy, "comfy.utils": utils, "comfy.model_management": mm})


def install_fake_folder_paths(diffusers_root, vae_approx_dir):
    fp = types.ModuleType("folder_paths")
    fp.get_folder_paths = lambda kind: {"diffusers": [diffusers_root], "vae_approx": [vae_approx_dir]}[kind]
    fp.get_filename_list = lambda kind: sorted(os.listdir(vae_approx_dir)) if kind == "vae_approx" else []
    fp.get_full_path = lambda kind, name: os.path.join(vae_approx_dir, name) if kind == "vae_approx" else None
    sys.modules["folder_paths"] = fp


# ---- import as ComfyUI does: custom_nodes/<clone>/__init__.py as a package ------------

for m in ("comfy", "comfy.utils", "comfy.model_management", "folder_paths"):
    check(m not in sys.modules, f"no {m} module before the node pack is imported")
spec = importlib.util.spec_from_file_location("qdiff_clone", os.path.join(REPO, "__init__.py"))
pack = importlib.util.module_from_spec(spec)
sys.modules["qdiff_clone"] = pack
spec.loader.exec_module(pack)
check(set(pack.NODE_CLASS_MAPPINGS) == {"QdiffSampler", "QdiffLora", "QdiffVaeEncode"} and
      pack.NODE_DISPLAY_NAME_MAPPINGS == {"QdiffSampler": "qdiff Sampler", "QdiffLora": "qdiff LoRA",
                                          "QdiffVaeEncode": "qdiff VAE Encode"},
      "repo-root __init__.py exports 'qdiff Sampler', 'qdiff LoRA' and 'qdiff VAE Encode'")
node_mod = sys.modules["qdiff_clone.bindings.comfyui.sampler_node"]
lq = sys.modules["qdiff_clone.bindings.comfyui.libqdiff"]
Node = pack.NODE_CLASS_MAPPINGS["QdiffSampler"]
lib = lq.load()
check(os.path.realpath(lib.path) == os.path.realpath(LIB), f"library loaded from QDIFF_LIB ({lib.path})")

# ---- ABI guard ---------------------------------------------------------------------------

check(lib.dll.qd_gen_params_size() == ctypes.sizeof(lq.GenParams),
      f"qd_gen_params_size() {lib.dll.qd_gen_params_size()} == ctypes mirror {ctypes.sizeof(lq.GenParams)}")
real_params = lq.GenParams


class ShortParams(ctypes.Structure):   # a mirror that lost its last two int fields (one alone may hide in padding)
    _fields_ = real_params._fields_[:-2]


lq.GenParams = ShortParams
e = expect_raises(lq.QdiffError, lambda: lq.Library(LIB), "a struct mirror of the wrong size is refused")
check(e is not None and "bytes in the library" in str(e), "  ... with a message naming the size mismatch")
lq.GenParams = real_params

# ---- INPUT_TYPES without ComfyUI ---------------------------------------------------------

it = Node.INPUT_TYPES()
req = it["required"]
check(req["model"][0] == "STRING", "model folder is a STRING without folder_paths")
check(req["prompt"][1].get("multiline") and req["negative_prompt"][1].get("multiline"), "prompts are multiline")
check(req["seed"][1]["min"] == 0 and req["seed"][1]["max"] == 2 ** 64 - 1, "seed 0..2^64-1")
listing = cli(["samplers"]).stdout
sections = listing.split("\n\n")
cli_names = [[ln.split()[0] for ln in sec.splitlines()[1:] if ln.strip()] for sec in sections[:3]]
check(req["sampler_name"][0] == ["diffusers default"] + cli_names[0] + cli_names[2],
      f"sampler_name: diffusers default + {len(cli_names[0])} ComfyUI samplers + {len(cli_names[2])} "
      "diffusers classes, as `qdiff samplers` lists them")
check(req["scheduler"][0] == ["diffusers default"] + cli_names[1],
      f"scheduler: diffusers default + the {len(cli_names[1])} schedules of `qdiff samplers`")
check({"guidance", "threads", "batch_size", "matmul", "precision", "preview_vae", "loras"} <= set(it["optional"]),
      "optional inputs: guidance, threads, batch_size, matmul, precision, preview_vae, loras")
check(it["optional"]["loras"][0] == "QDIFF_LORAS", "loras takes the qdiff LoRA node's QDIFF_LORAS")
LoraNode = pack.NODE_CLASS_MAPPINGS["QdiffLora"]
lit = LoraNode.INPUT_TYPES()
check(lit["required"]["lora_name"][0] == "STRING" and lit["required"]["strength"][1]["default"] == 1.0 and
      lit["optional"]["loras"][0] == "QDIFF_LORAS" and LoraNode.RETURN_TYPES == ("QDIFF_LORAS",),
      "qdiff LoRA: lora_name (a path without folder_paths), strength 1.0, chains QDIFF_LORAS")
check(Node.RETURN_TYPES == ("IMAGE", "LATENT"), "returns IMAGE and LATENT")
saved = os.environ.pop("QD_PRECISION", None)
prec = Node.INPUT_TYPES()["optional"]["precision"]
check(prec[0] == ["auto", "fp32", "bf16"] and prec[1]["default"] == "auto", f"precision: auto (default), fp32, bf16 ({prec})")
os.environ["QD_PRECISION"] = "fp32"
check(Node.INPUT_TYPES()["optional"]["precision"][1]["default"] == "fp32", "$QD_PRECISION=fp32 sets the default")
os.environ.pop("QD_PRECISION")
if saved is not None:
    os.environ["QD_PRECISION"] = saved

# ---- generation against the CLI's PNG and the goldens ---------------------------------

node = Node()


def run_case(name, model, prompt, neg, steps, cfg, width, height, seed, sampler, sched, cli_args, golden=None,
             batch=1, precision="fp32", tol=1e-3, **extra):
    """fp32 (the goldens' arithmetic, asked for explicitly: the default is auto) unless told."""
    mdir = os.path.join(FX, "models", model)
    img, lat = node.sample(mdir, prompt, neg, steps, cfg, width, height, seed, sampler, sched,
                           batch_size=batch, threads=1, precision=precision, **extra)
    cli_args = cli_args + ["--precision", precision]
    check(isinstance(img, torch.Tensor) and img.dtype == torch.float32 and tuple(img.shape) == (batch, height, width, 3)
          and img.is_contiguous(), f"{name}: IMAGE torch.float32 {tuple(img.shape)}")
    check(float(img.min()) >= 0.0 and float(img.max()) <= 1.0 and float(img.max()) > float(img.min()),
          f"{name}: IMAGE in [0,1] ({float(img.min()):.3f}..{float(img.max()):.3f})")
    out = os.path.join(TMP, f"{name}.png")
    r = cli(["generate", "-m", mdir, "-p", prompt, "--steps", str(steps), "-W", str(width), "-H", str(height),
             "--seed", str(seed), "-t", "1", "-q", "-o", out] + (["-n", neg] if neg else []) +
            (["--cfg", str(cfg)] if cfg >= 0 else []) + (["--batch", str(batch)] if batch > 1 else []) + cli_args)
    if not check(r.returncode == 0, f"{name}: qdiff generate ran ({r.stderr.strip()})"):
        return img, lat
    u8 = torch.round(img * 255).to(torch.uint8).numpy()
    for k in range(batch):
        png = read_png(out if batch == 1 else out.replace(".png", f"-{k + 1}.png"))
        diff = int(np.abs(png.astype(int) - u8[k].astype(int)).max())
        check(png.shape == u8[k].shape and diff == 0,
              f"{name}: image {k + 1} round(IMAGE*255) equals the CLI's PNG (max diff {diff})")
    c = 16 if model.startswith("flux") else 4
    samples = lat["samples"]
    check(isinstance(samples, torch.Tensor) and samples.dtype == torch.float32 and
          tuple(samples.shape) == (batch, c, height // 8, width // 8),
          f"{name}: LATENT samples {tuple(samples.shape)}")
    if golden:
        g = read_safetensors(os.path.join(FX, "goldens", golden))["latents"]
        if g.ndim == 3:
            g = unpack_golden_flux(g, height, width)
        scale, shift = vae_factors(mdir)
        r2 = rel_l2((samples.numpy() - shift) * scale, g)
        check(r2 <= tol, f"{name}: (LATENT - shift) * scale vs golden {golden}: rel L2 {r2:.2e} (tol {tol:g})")
        # the LATENT is the VAE-space latent ComfyUI's VAEDecode takes: undo it the other way too
        r3 = rel_l2(samples.numpy(), g / scale + shift)
        check(r3 <= tol, f"{name}: LATENT vs golden / scale + shift: rel L2 {r3:.2e} (tol {tol:g})")
    return img, lat


ASTRO = "a photograph of an astronaut riding a horse"
run_case("shapes_euler", "shapes-sd", "a red circle on a blue background", "", 20, 5.0, 64, 64, 100,
         "EulerDiscreteScheduler", "diffusers default", ["--scheduler", "EulerDiscreteScheduler"],
         golden="shapes-sd/pipe_00.safetensors")
# bf16 (where the CPU has AVX512_BF16): within test_pipeline_bf16's shapes-sd bound of the fp32 golden
if "avx512_bf16" in open("/proc/cpuinfo").read():
    run_case("shapes_euler_bf16", "shapes-sd", "a red circle on a blue background", "", 20, 5.0, 64, 64, 100,
             "EulerDiscreteScheduler", "diffusers default", ["--scheduler", "EulerDiscreteScheduler"],
             golden="shapes-sd/pipe_00.safetensors", precision="bf16", tol=2.5e-2)
    check(node_mod.CACHE.ctx.precision() == "bf16", "precision bf16: the context runs bf16")
else:
    print("note: no AVX512_BF16 on this CPU: the node's bf16 run is not tested")
run_case("sd15_pndm_default", "sd15-tiny", ASTRO, "blurry, low quality", 6, 7.5, 64, 64, 1239,
         "diffusers default", "diffusers default", [], golden="sd15-tiny/pipe_pndm.safetensors")
run_case("sd15_euler_karras", "sd15-tiny", "UPPERCASE and MiXeD case, numbers 1234567890 and 3.14159", "lowres",
         6, 6.0, 64, 64, 608, "EulerDiscreteScheduler", "karras",
         ["--scheduler", "EulerDiscreteScheduler", "--karras"], golden="sd15-tiny/pipe_euler_karras.safetensors")
run_case("flux_default", "flux-tiny", ASTRO, "", 4, -1.0, 96, 64, 2024, "diffusers default", "diffusers default",
         ["--guidance", "3.5"], golden="flux-tiny/pipe_flow_euler.safetensors", guidance=3.5)
big_seed = 2 ** 64 - 59
run_case("sd15_dpmpp2m_karras_batch2", "sd15-tiny", "a cat", "", 5, 7.0, 64, 48, big_seed, "dpmpp_2m", "karras",
         ["--sampler", "dpmpp_2m", "--schedule", "karras"], batch=2)
run_case("sd15_euler_a_default_schedule", "sd15-tiny", "a dog", "ugly", 4, 7.0, 64, 64, 7, "euler_ancestral",
         "diffusers default", ["--sampler", "euler_ancestral"])
run_case("shapes_matmul_int8", "shapes-sd", "a blue square", "", 4, 5.0, 64, 64, 3, "euler", "normal",
         ["--sampler", "euler", "--schedule", "normal", "--matmul", "int8"], matmul="int8")

# ---- LoRAs: the qdiff LoRA node chained into the sampler = generate --lora ------------

loradir = os.path.join(TMP, "loras")
r = subprocess.run([sys.executable, os.path.join(REPO, "tests", "tools", "lora_reference.py"), "make", sd15_dir := os.path.join(FX, "models", "sd15-tiny"), loradir],
                   capture_output=True, text=True)
if check(r.returncode == 0, f"test LoRAs made by tests/tools/lora_reference.py ({r.stderr.strip()})"):
    kohya = os.path.join(loradir, "kohya.safetensors")
    peft = os.path.join(loradir, "peft", "adapter_model.safetensors")
    chain = LoraNode().add(kohya, 0.8)[0]
    chain = LoraNode().add(peft, 1.2, loras=chain)[0]
    check(chain == ((kohya, 0.8), (peft, 1.2)), "two chained qdiff LoRA nodes give both (path, strength) in order")
    run_case("sd15_two_loras", "sd15-tiny", "a red circle", "blurry", 4, 7.0, 64, 64, 21, "euler", "normal",
             ["--sampler", "euler", "--lora", kohya + ":0.8", "--lora", peft + ":1.2"], loras=chain)
    run_case("sd15_after_loras", "sd15-tiny", "a red circle", "blurry", 4, 7.0, 64, 64, 21, "euler", "normal",
             ["--sampler", "euler"])   # the next run without loras: the model as loaded
    run_case("sd15_lora_strength0", "sd15-tiny", "a red circle", "blurry", 4, 7.0, 64, 64, 21, "euler", "normal",
             ["--sampler", "euler"], loras=LoraNode().add(kohya, 0.0)[0])
    nomatch = os.path.join(loradir, "nomatch.safetensors")
    e = expect_raises(lq.QdiffError, lambda: node.sample(sd15_dir, "x", "", 2, -1, 64, 64, 0, "euler", "normal",
                                                         loras=LoraNode().add(nomatch, 1.0)[0]),
                      "a LoRA matching no layer raises QdiffError")
    check(e is not None and "0 of its 1 LoRA layers matched" in str(e) and "nomatch.safetensors" in str(e),
          f"  ... naming the file and the count ({e})")

# ---- errors carry the library's message ----------------------------------------------

bad = os.path.join(TMP, "no-such-model")
cli_msg = cli(["generate", "-m", bad, "-p", "x", "-q", "-o", os.path.join(TMP, "bad.png")]).stderr.strip()
e = expect_raises(lq.QdiffError, lambda: node.sample(bad, "x", "", 2, -1, 0, 0, 0, "euler", "normal"),
                  "a missing model folder raises QdiffError")
check(e is not None and f"qdiff: {e}" == cli_msg, f"  ... with the library's message, as the CLI prints it ({cli_msg})")
notmodel = os.path.join(FX, "models")
cli_msg = cli(["generate", "-m", notmodel, "-p", "x", "-q", "-o", os.path.join(TMP, "bad.png")]).stderr.strip()
e = expect_raises(lq.QdiffError, lambda: node.sample(notmodel, "x", "", 2, -1, 0, 0, 0, "euler", "normal"),
                  "a folder without model_index.json raises QdiffError")
check(e is not None and f"qdiff: {e}" == cli_msg, f"  ... naming the file ({cli_msg})")
sd15 = os.path.join(FX, "models", "sd15-tiny")
cli_msg = cli(["generate", "-m", sd15, "-p", "x", "-W", "60", "-q", "-o", os.path.join(TMP, "bad.png")]).stderr.strip()
e = expect_raises(lq.QdiffError, lambda: node.sample(sd15, "x", "", 2, -1, 60, 64, 0, "euler", "normal"),
                  "width 60 raises QdiffError")
check(e is not None and f"qdiff: {e}" == cli_msg, f"  ... with the library's message ({cli_msg})")
expect_raises(lq.QdiffError, lambda: node.sample(sd15, "x", "", 2, -1, 0, 0, 0, "EulerDiscreteScheduler", "beta"),
              "a ComfyUI schedule with a diffusers class is refused")
e = expect_raises(lq.QdiffError, lambda: node.sample(sd15, "x", "", 2, -1, 0, 0, 0, "no_such_sampler", "normal"),
                  "an unknown sampler name raises QdiffError")
check(e is not None and "no_such_sampler" in str(e), "  ... naming it")
expect_raises(lq.QdiffError, lambda: node.sample(sd15, "x", "", 2, -1, 0, 0, 2 ** 64, "euler", "normal"),
              "seed 2^64 is refused")

# ---- the model stays open between runs ----------------------------------------------------

opens = []
real_open = lib.dll.qd_model_open


def counting_open(*args):
    opens.append(args[1])
    return real_open(*args)


lib.dll.qd_model_open = counting_open
shapes = os.path.join(FX, "models", "shapes-sd")
a1, _ = node.sample(shapes, "a red circle", "", 3, 5.0, 64, 64, 1, "euler", "normal", threads=1)
ptr = node_mod.CACHE.model.ptr
check(len(opens) == 1, f"first run on a folder opens it once ({len(opens)} opens)")
opens.clear()
a2, _ = node.sample(shapes, "a red circle", "", 3, 5.0, 64, 64, 1, "euler", "normal", threads=1)
check(len(opens) == 0 and node_mod.CACHE.model.ptr == ptr and torch.equal(a1, a2),
      "second run: no reopen, same model, same image")
node.sample(sd15, "a red circle", "", 2, 5.0, 64, 64, 1, "euler", "normal", threads=1)
check(len(opens) == 1, f"another folder opens once ({len(opens)} opens)")
node.sample(sd15, "a red circle", "", 2, 5.0, 64, 64, 1, "euler", "normal", threads=1)
check(len(opens) == 1, "and then stays open")
lib.dll.qd_model_open = real_open

# ---- progress bar, previews and interrupt with fake ComfyUI modules --------------------

install_fake_comfy()
FakeProgressBar.instances.clear()
img, _ = node.sample(sd15, ASTRO, "", 5, 7.5, 64, 64, 11, "euler", "normal", threads=1)
bar = FakeProgressBar.instances[-1] if FakeProgressBar.instances else None
vals = [c[0] for c in bar.calls] if bar else []
check(bar is not None and vals == [1, 2, 3, 4, 5] and all(c[1] == 5 for c in bar.calls),
      f"euler 5 steps: ProgressBar.update_absolute 1..5 of 5 ({vals})")
check(bar is not None and all(c[2] is None for c in bar.calls), "no preview without a preview VAE")

FakeProgressBar.instances.clear()
node.sample(sd15, ASTRO, "", 3, 7.5, 64, 64, 11, "heun", "normal", threads=1)
bar = FakeProgressBar.instances[-1]
vals = [c[0] for c in bar.calls]
check(vals == [1, 2, 3, 4, 5] and bar.calls[-1][1] == 5,
      f"heun 3 steps: 5 model calls reported, total 5 ({vals})")

FakeProgressBar.instances.clear()
img_p, _ = node.sample(sd15, ASTRO, "", 5, 7.5, 64, 64, 11, "euler", "normal", threads=1,
                       preview_vae=os.path.join(sd15, "vae"))
bar = FakeProgressBar.instances[-1]
prevs = [c[2] for c in bar.calls]
check(len(prevs) == 5 and all(p is not None and p[0] == "JPEG" and p[1].size == (64, 64) and p[2] == 512
                                for p in prevs),
      "preview VAE: every update carries ('JPEG', 64x64 PIL image, 512)")
check(torch.equal(img, img_p), "previews do not change the image")
last = np.asarray(prevs[-1][1], dtype=np.float64) / 255 if prevs and prevs[-1] else np.zeros((64, 64, 3))
mad = float(np.abs(last - img_p[0].numpy()).mean())
check(mad < 0.02, f"the last preview (x0 at sigma 0, full VAE) matches the image: mean abs diff {mad:.4f} (tol 0.02)")

cli_args = types.ModuleType("comfy.cli_args")
sys.modules["comfy.cli_args"] = cli_args
for method, side in (("none", 512), ("taesd", 256)):
    cli_args.args = types.SimpleNamespace(preview_method=types.SimpleNamespace(value=method), preview_size=side)
    FakeProgressBar.instances.clear()
    node.sample(sd15, ASTRO, "", 2, 7.5, 64, 64, 11, "euler", "normal", threads=1, preview_vae=os.path.join(sd15, "vae"))
    prevs = [c[2] for c in FakeProgressBar.instances[-1].calls]
    if method == "none":
        check(prevs == [None, None], "ComfyUI's --preview-method none: no previews")
    else:
        check(len(prevs) == 2 and all(p is not None and p[2] == 256 for p in prevs), "--preview-size 256 is passed on")
del sys.modules["comfy.cli_args"]

FakeMM.flag, FakeMM.cleared = True, 0
FakeProgressBar.instances.clear()
expect_raises(FakeInterrupt, lambda: node.sample(sd15, ASTRO, "", 6, 7.5, 64, 64, 11, "euler", "normal", threads=1),
              "interrupt pending before the run: ComfyUI's InterruptProcessingException")
bar = FakeProgressBar.instances[-1] if FakeProgressBar.instances else None
check(bar is not None and len(bar.calls) == 0 and FakeMM.cleared == 1 and not FakeMM.flag,
      "  ... before any progress update, and the interrupt flag is cleared")

for mode in ("euler", "EulerDiscreteScheduler"):
    FakeProgressBar.instances.clear()
    FakeMM.on_update = lambda v: setattr(FakeMM, "flag", FakeMM.flag or v == 2)
    expect_raises(FakeInterrupt, lambda: node.sample(sd15, ASTRO, "", 6, 7.5, 64, 64, 11, mode, "diffusers default",
                                                     threads=1),
                  f"{mode}: interrupt at step 2 of 6 raises InterruptProcessingException")
    FakeMM.on_update = None
    vals = [c[0] for c in FakeProgressBar.instances[-1].calls]
    check(vals == [1, 2], f"  ... and no step after it ({vals})")
check(not FakeMM.flag, "interrupt flag cleared by the node")


def interrupting_hook(v):   # ComfyUI's progress hook itself raises on interrupt
    if v == 3:
        raise FakeInterrupt("raised inside the progress bar hook")


FakeMM.on_update = interrupting_hook
FakeProgressBar.instances.clear()
e = expect_raises(FakeInterrupt, lambda: node.sample(sd15, ASTRO, "", 6, 7.5, 64, 64, 11, "euler", "normal", threads=1),
                  "an exception raised in the progress hook stops the run and reaches the caller")
FakeMM.on_update = None
vals = [c[0] for c in FakeProgressBar.instances[-1].calls]
check(vals == [1, 2, 3] and e is not None and "hook" in str(e), f"  ... at that step ({vals})")

img_after, _ = node.sample(sd15, ASTRO, "", 5, 7.5, 64, 64, 11, "euler", "normal", threads=1)
check(torch.equal(img_after, img), "after interrupts, the cached model runs again and gives the same image")

# ---- image-to-image: a LATENT input with denoise (ComfyUI's KSampler semantics) ---------

sd15_dir = os.path.join(FX, "models", "sd15-tiny")
# denoise 1 on ComfyUI's empty (zero) latent is txt2img, bit for bit
t2i, _ = node.sample(sd15_dir, ASTRO, "", 4, 7.5, 64, 64, 21, "euler", "normal", threads=1, precision="fp32")
i2i, _ = node.sample(sd15_dir, ASTRO, "", 4, 7.5, 0, 0, 21, "euler", "normal", threads=1, precision="fp32",
                     latent_image={"samples": torch.zeros(1, 4, 8, 8)}, denoise=1.0)
check(torch.equal(t2i, i2i), "LATENT of zeros at denoise 1 = txt2img (ComfyUI's EmptyLatentImage), bit-exact")
# a picture encoded by 'qdiff vae encode' (the mean, as ComfyUI's VAEEncode) into ComfyUI's LATENT space,
# sampled at denoise 0.5, equals 'qdiff generate --init-image' of the same picture
pic = os.path.join(FX, "goldens", "shapes-sd", "pipe_00.png")
lat_file = os.path.join(TMP, "enc.safetensors")
r = cli(["vae", "encode", "--vae", os.path.join(sd15_dir, "vae"), "-i", pic, "-o", lat_file, "--precision", "fp32"])
if check(r.returncode == 0, f"qdiff vae encode of {os.path.basename(pic)} ({r.stderr.strip()})"):
    enc = read_safetensors(lat_file)["latent"]
    scale, shift = vae_factors(sd15_dir)
    latent = {"samples": torch.from_numpy(enc / scale + shift)}
    # the qdiff VAE Encode node gives the same LATENT from the IMAGE
    Enc = pack.NODE_CLASS_MAPPINGS["QdiffVaeEncode"]
    pix = torch.from_numpy(read_png(pic).astype(np.float32) / 255.0)[None]
    ep = Enc.INPUT_TYPES()["optional"].get("precision")
    check(ep is not None and ep[0] == ["auto", "fp32", "bf16"], f"VAE Encode has its own precision input ({ep})")
    Enc().encode(sd15_dir, pix, threads=1, precision="bf16")
    check(node_mod.CACHE.ctx.precision() == "bf16", "VAE Encode precision bf16: the context runs bf16")
    (node_lat,) = Enc().encode(sd15_dir, pix, threads=1, precision="fp32")   # after a bf16 run: its own fp32
    check(node_mod.CACHE.ctx.precision() == "fp32", "VAE Encode precision fp32 after a bf16 run: the context runs fp32")
    r4 = rel_l2(node_lat["samples"].numpy(), latent["samples"].numpy())
    check(r4 <= 1e-5, f"qdiff VAE Encode node LATENT = qdiff vae encode's / scale + shift: rel L2 {r4:.2e} (tol 1e-5)")
    img_i2i, _ = node.sample(sd15_dir, "a blue square", "", 4, 7.5, 0, 0, 33, "euler", "karras", threads=1,
                             precision="fp32", latent_image=latent, denoise=0.5)
    out = os.path.join(TMP, "i2i_cli.png")
    r = cli(["generate", "-m", sd15_dir, "-p", "a blue square", "--steps", "4", "--cfg", "7.5", "--seed", "33",
             "--sampler", "euler", "--schedule", "karras", "--init-image", pic, "--strength", "0.5", "-t", "1", "-q",
             "--precision", "fp32", "-o", out])
    if check(r.returncode == 0, f"qdiff generate --init-image ran ({r.stderr.strip()})"):
        diff = int(np.abs(read_png(out).astype(int) - torch.round(img_i2i[0] * 255).to(torch.uint8).numpy()).max())
        check(diff == 0, f"node LATENT + denoise 0.5 = CLI --init-image --strength 0.5 (max diff {diff})")
        check("Denoising strength: 0.5" in Image.open(out).text.get("parameters", ""),
              "the PNG parameters record 'Denoising strength: 0.5'")
    # inpainting: a MASK (left half repainted), and the same as the LATENT's noise_mask
    # (SetLatentNoiseMask), equal 'qdiff generate --mask' of the same picture
    half = torch.zeros(1, 64, 64)
    half[:, :, :32] = 1.0
    Image.fromarray((half[0].numpy() * 255).astype(np.uint8), "L").save(os.path.join(TMP, "half.png"))
    img_m, _ = node.sample(sd15_dir, "a blue square", "", 4, 7.5, 0, 0, 33, "euler", "karras", threads=1,
                           precision="fp32", latent_image=latent, denoise=0.5, mask=half)
    img_n, _ = node.sample(sd15_dir, "a blue square", "", 4, 7.5, 0, 0, 33, "euler", "karras", threads=1,
                           precision="fp32", latent_image=dict(latent, noise_mask=half.reshape(1, 1, 64, 64)), denoise=0.5)
    check(torch.equal(img_m, img_n), "MASK input = the LATENT's noise_mask, bit for bit")
    check(not torch.equal(img_m, img_i2i), "the mask changes the picture (inpainting is not image-to-image)")
    out = os.path.join(TMP, "inpaint_cli.png")
    r = cli(["generate", "-m", sd15_dir, "-p", "a blue square", "--steps", "4", "--cfg", "7.5", "--seed", "33",
             "--sampler", "euler", "--schedule", "karras", "--init-image", pic, "--strength", "0.5", "-t", "1", "-q",
             "--precision", "fp32", "--mask", os.path.join(TMP, "half.png"), "-o", out])
    if check(r.returncode == 0, f"qdiff generate --mask ran ({r.stderr.strip()})"):
        diff = int(np.abs(read_png(out).astype(int) - torch.round(img_m[0] * 255).to(torch.uint8).numpy()).max())
        check(diff == 0, f"node LATENT + MASK = CLI --init-image --mask (max diff {diff})")
    expect_raises(lq.QdiffError, lambda: node.sample(sd15_dir, ASTRO, "", 4, 7.5, 64, 64, 1, "euler", "normal",
                                                      mask=half, precision="fp32", threads=1), "a mask without a latent_image")
    expect_raises(lq.QdiffError, lambda: node.sample(sd15_dir, ASTRO, "", 4, 7.5, 0, 0, 1, "euler", "normal",
                                                      latent_image=latent, denoise=0.5, mask=torch.zeros(1, 3, 64, 64),
                                                      precision="fp32", threads=1),
                  "a mask of 3 channels")
    # pixels instead of latents: the IMAGE input is encoded by the library (= the CLI's --init-image),
    # and a 9-channel inpainting UNet (InpaintModelConditioning + KSampler) runs from IMAGE + MASK
    img_px, _ = node.sample(sd15_dir, "a blue square", "", 4, 7.5, 0, 0, 33, "euler", "karras", threads=1,
                            precision="fp32", image=pix, denoise=0.5)
    diff = int(np.abs(read_png(os.path.join(TMP, "i2i_cli.png")).astype(int) -
                      torch.round(img_px[0] * 255).to(torch.uint8).numpy()).max())
    check(diff == 0, f"node IMAGE + denoise 0.5 = CLI --init-image --strength 0.5 (max diff {diff})")
    inp9 = os.path.join(TMP, "inp9")
    r = subprocess.run([sys.executable, os.path.join(REPO, "tests", "tools", "make_inpaint_unet.py"), sd15_dir, inp9,
                        "concat", "0.25"], capture_output=True, text=True)
    if check(r.returncode == 0, f"made a 9-channel inpainting UNet ({r.stderr.strip()})"):
        img9, _ = node.sample(inp9, "a blue square", "", 4, 7.5, 0, 0, 33, "euler", "karras", threads=1,
                              precision="fp32", image=pix, mask=half)
        out = os.path.join(TMP, "inpaint9_cli.png")
        r = cli(["generate", "-m", inp9, "-p", "a blue square", "--steps", "4", "--cfg", "7.5", "--seed", "33",
                 "--sampler", "euler", "--schedule", "karras", "--init-image", pic, "-t", "1", "-q",
                 "--precision", "fp32", "--mask", os.path.join(TMP, "half.png"), "-o", out])
        if check(r.returncode == 0, f"qdiff generate with the 9-channel UNet ran ({r.stderr.strip()})"):
            diff = int(np.abs(read_png(out).astype(int) - torch.round(img9[0] * 255).to(torch.uint8).numpy()).max())
            check(diff == 0, f"9-channel UNet: node IMAGE + MASK = CLI --init-image --mask (max diff {diff})")
        img4, _ = node.sample(sd15_dir, "a blue square", "", 4, 7.5, 0, 0, 33, "euler", "karras", threads=1,
                              precision="fp32", image=pix, mask=half)
        check(not torch.equal(img9, img4), "the 9-channel model's mask channel changes the picture")
        e = expect_raises(lq.QdiffError, lambda: node.sample(inp9, "x", "", 2, 7.5, 0, 0, 1, "euler", "normal",
                                                             latent_image=latent, mask=half, precision="fp32",
                                                             threads=1), "9-channel UNet from a LATENT")
        check(e is not None and "give the image" in str(e), f"... and the error says to give the image ({e})")
    expect_raises(lq.QdiffError, lambda: node.sample(sd15_dir, "x", "", 2, 7.5, 0, 0, 1, "euler", "normal",
                                                      latent_image=latent, image=pix, precision="fp32", threads=1),
                  "latent_image and image together")
    expect_raises(lq.QdiffError, lambda: node.sample(sd15_dir, "x", "", 2, 7.5, 0, 0, 1, "euler", "normal",
                                                      image=pix[..., :2], precision="fp32", threads=1),
                  "an image of 2 channels")
# the node's LATENT is the encoder's mean, as ComfyUI's VAEEncode: diffusers' golden encoded_mean
# (sd15-tiny/vae.safetensors: image in [-1, 1] NCHW -> latent_dist.mean)
vg = read_safetensors(os.path.join(FX, "goldens", "sd15-tiny", "vae.safetensors"))
pix = torch.from_numpy(((vg["image"][0].transpose(1, 2, 0) + 1) / 2).astype(np.float32))[None]
(gl,) = pack.NODE_CLASS_MAPPINGS["QdiffVaeEncode"]().encode(sd15_dir, pix.contiguous(), threads=1, precision="fp32")
r5 = rel_l2(gl["samples"].numpy(), vg["encoded_mean"])
check(r5 <= 1e-4, f"qdiff VAE Encode node = diffusers' encoded_mean golden: rel L2 {r5:.2e} (tol 1e-4)")
expect_raises(lq.QdiffError, lambda: pack.NODE_CLASS_MAPPINGS["QdiffVaeEncode"]().encode(sd15_dir, torch.zeros(1, 4, 4, 3)),
              "VAE Encode of a 4x4 image")
expect_raises(lq.QdiffError, lambda: node.sample(sd15_dir, ASTRO, "", 4, 7.5, 64, 64, 1, "euler", "normal",
                                                  denoise=0.5), "denoise < 1 without a latent_image")
expect_raises(lq.QdiffError, lambda: node.sample(sd15_dir, ASTRO, "", 4, 7.5, 0, 0, 1, "euler", "normal",
                                                  latent_image={"samples": torch.zeros(1, 16, 8, 8)}),
              "a 16-channel LATENT for an SD1.5 model")
expect_raises(lq.QdiffError, lambda: node.sample(sd15_dir, ASTRO, "", 4, 7.5, 0, 0, 1, "euler", "normal",
                                                  latent_image={"samples": torch.zeros(1, 4, 8, 8)}, denoise=0.0),
              "denoise 0")

# ---- inside ComfyUI: folders under models/diffusers and vae_approx ---------------------

vae_approx = os.path.join(TMP, "vae_approx")
os.makedirs(vae_approx)
install_fake_folder_paths(os.path.join(FX, "models"), vae_approx)
it = Node.INPUT_TYPES()
models = it["required"]["model"][0]
check(isinstance(models, list) and "sd15-tiny" in models and "shapes-sd" in models and "flux-tiny" in models,
      f"with folder_paths: model is a dropdown of diffusers folders ({len(models)})")
check(it["optional"]["preview_vae"][0][:2] == ["auto", "none"], "preview_vae: auto, none + vae_approx files")
FakeProgressBar.instances.clear()
img_fp, _ = node.sample("sd15-tiny", ASTRO, "", 5, 7.5, 64, 64, 11, "euler", "normal", threads=1, preview_vae="auto")
check(torch.equal(img_fp, img), "a dropdown name resolves under models/diffusers (same image as the full path)")
check(all(c[2] is None for c in FakeProgressBar.instances[-1].calls), "auto preview without a TAESD installed: none")
# stand-in for models/vae_approx/taesd_decoder.*: the fixture's own SD1.5 VAE folder
os.symlink(os.path.join(sd15, "vae"), os.path.join(vae_approx, "taesd_decoder"))
FakeProgressBar.instances.clear()
node.sample("sd15-tiny", ASTRO, "", 3, 7.5, 64, 64, 11, "euler", "normal", threads=1, preview_vae="auto")
check(all(c[2] is not None for c in FakeProgressBar.instances[-1].calls), "auto picks taesd_decoder for SD1.5")
FakeProgressBar.instances.clear()
node.sample("flux-tiny", ASTRO, "", 2, -1, 96, 64, 11, "euler", "diffusers default", threads=1, preview_vae="auto")
check(all(c[2] is None for c in FakeProgressBar.instances[-1].calls), "  ... and nothing for FLUX (no taef1_decoder)")

node_mod.CACHE.clear()   # the library frees everything (the ASan run checks for leaks)
check(node_mod.CACHE.model is None and node_mod.CACHE.ctx is None, "cache cleared")

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
