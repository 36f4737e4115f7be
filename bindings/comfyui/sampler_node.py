"""The "qdiff Sampler" ComfyUI node: text-to-image with libqdiff from a diffusers folder,
or image-to-image from an optional LATENT (ComfyUI's VAEEncode output, or an earlier
run's) or IMAGE (encoded by the library with the folder's VAE) with denoise as ComfyUI's
KSampler takes it, and inpainting with an optional MASK (or the LATENT's "noise_mask", as
SetLatentNoiseMask leaves it). 9-channel inpainting UNets need the IMAGE and the MASK (as
ComfyUI's InpaintModelConditioning takes pixels, not latents).

Returns ComfyUI's IMAGE (torch.float32 [B, H, W, 3] in [0, 1]) and LATENT
({"samples": [B, C, H/8, W/8]} in the VAE's own latent space, as ComfyUI's
VAEDecode and KSampler hold it). Works without ComfyUI too (tests import it with
plain torch): ComfyUI's modules (folder_paths, comfy.utils, comfy.model_management)
are used when importable.
"""
import ctypes
import json
import os
import threading

import torch

try:
    from . import libqdiff
except ImportError:   # imported as a top-level module (tests, scripts)
    import libqdiff

DIFFUSERS_DEFAULT = "diffusers default"
PREVIEW_AUTO, PREVIEW_NONE = "auto", "none"
PREVIEW_MAX_SIDE = 512   # ComfyUI's default --preview-size
# The TAESD decoder ComfyUI keeps in models/vae_approx for each family.
TAESD_FOR_FAMILY = {"sd15": "taesd_decoder", "sdxl": "taesdxl_decoder", "sd3": "taesd3_decoder",
                    "flux": "taef1_decoder"}


def _comfy(name):
    """A ComfyUI module when running inside ComfyUI (tests install fakes), else None."""
    try:
        if name == "folder_paths":
            import folder_paths as m
        elif name == "utils":
            import comfy.utils as m
        else:
            import comfy.model_management as m
        return m
    except ImportError:
        return None


def _names(what):
    try:
        return libqdiff.load().names(what)
    except libqdiff.QdiffError:
        return []   # the node still lists; running it reports why the library is missing


def _model_folders():
    """Diffusers folders (holding model_index.json) under ComfyUI's models/diffusers, 2 levels deep."""
    fp = _comfy("folder_paths")
    if fp is None:
        return None
    try:
        roots = fp.get_folder_paths("diffusers")
    except (KeyError, AttributeError):
        return None
    found = []
    for root in roots:
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, _ in os.walk(root, followlinks=True):
            rel = os.path.relpath(dirpath, root)
            depth = 0 if rel == "." else rel.count(os.sep) + 1
            if depth and os.path.isfile(os.path.join(dirpath, "model_index.json")):
                found.append(rel)
                dirnames[:] = []
            elif depth >= 2:
                dirnames[:] = []
    return sorted(set(found))


def _model_input():
    """The node input naming the model: a list of the folders found, else a path to type."""
    folders = _model_folders()
    if folders:
        return (folders, {"tooltip": "a diffusers folder under models/diffusers"})
    return ("STRING", {"default": "", "tooltip": "path of a diffusers folder (model_index.json + components)"})


def _resolve_folder(name):
    if os.path.isabs(name) or os.path.isdir(name):
        return name
    fp = _comfy("folder_paths")
    if fp is not None:
        try:
            for root in fp.get_folder_paths("diffusers"):
                if os.path.isdir(os.path.join(root, name)):
                    return os.path.join(root, name)
        except (KeyError, AttributeError):
            pass
    return name   # qd_model_open names what is wrong with it


def _vae_approx_files():
    fp = _comfy("folder_paths")
    try:
        return list(fp.get_filename_list("vae_approx")) if fp is not None else None
    except (KeyError, AttributeError):
        return None


def _comfy_preview_args():
    """ComfyUI's --preview-method is none, and its --preview-size (defaults when not in ComfyUI)."""
    try:
        from comfy.cli_args import args
    except ImportError:
        return False, PREVIEW_MAX_SIDE
    method = getattr(args, "preview_method", None)
    return getattr(method, "value", method) == "none", int(getattr(args, "preview_size", PREVIEW_MAX_SIDE))


def _resolve_preview_vae(choice, family):
    """Path of the preview VAE, or None for no previews."""
    choice = (choice or "").strip()
    if choice in ("", PREVIEW_NONE) or _comfy_preview_args()[0]:
        return None
    fp = _comfy("folder_paths")
    if choice == PREVIEW_AUTO:
        want = TAESD_FOR_FAMILY.get(family)
        for f in _vae_approx_files() or []:
            if want and os.path.splitext(os.path.basename(f))[0] == want:
                return fp.get_full_path("vae_approx", f)
        return None   # no TAESD for this family installed: run without previews
    if fp is not None and not os.path.isabs(choice):
        full = fp.get_full_path("vae_approx", choice)
        if full:
            return full
    return choice


def _vae_factors(folder):
    """scaling_factor and shift_factor of the folder's VAE: LATENT holds (latent / scale + shift)."""
    try:
        with open(os.path.join(folder, "vae", "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise libqdiff.QdiffError(f"{folder}/vae/config.json: {e}") from e
    return float(cfg.get("scaling_factor") or 0.18215), float(cfg.get("shift_factor") or 0.0)


def unpack_flux_latents(packed, height, width):
    """FLUX's packed [B, (H/16)*(W/16), 4C] latents -> [B, C, H/8, W/8] (2x2 patches unfolded)."""
    b, tokens, c4 = packed.shape
    h, w = height // 16, width // 16
    x = packed.view(b, h, w, c4 // 4, 2, 2)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, h * 2, w * 2)


class _Cache:
    """The model (with its context) kept between runs; one folder at a time."""

    def __init__(self):
        self.lock = threading.Lock()
        self.key = self.ctx = self.model = None
        self.vae_path = self.vae = None

    def get(self, folder, threads):
        key = (os.path.realpath(folder), int(threads))
        if self.key != key:
            ctx = libqdiff.Context(libqdiff.load(), threads)
            try:
                model = libqdiff.Model(ctx, folder)
            except BaseException:   # the model already cached stays usable
                ctx.close()
                raise
            self.clear()
            self.key, self.ctx, self.model = key, ctx, model
        return self.ctx, self.model

    def preview_vae(self, path):
        if path is None:
            return None
        if self.vae_path != path:
            if self.vae:
                self.vae.close()
            self.vae, self.vae_path = None, None
            self.vae = libqdiff.PreviewVae(self.ctx, path)
            self.vae_path = path
        return self.vae

    def clear(self):
        if self.vae:
            self.vae.close()
        if self.model:
            self.model.close()
        if self.ctx:
            self.ctx.close()
        self.key = self.ctx = self.model = self.vae = self.vae_path = None


CACHE = _Cache()


class _InterruptWatch:
    """Polls ComfyUI's interrupt flag while the library runs and cancels it: the models
    check the cancel flag inside a step, so a big model stops without waiting for the step."""

    def __init__(self, ctx, interrupted):
        self.ctx, self.interrupted, self.stop = ctx, interrupted, threading.Event()
        self.thread = threading.Thread(target=self._run, name="qdiff-interrupt", daemon=True)

    def _run(self):
        while not self.stop.wait(0.1):
            if self.interrupted():
                self.ctx.cancel()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _interrupt_exception(mm):
    """ComfyUI's interrupt exception (which also clears its flag), or QdiffCancelled."""
    if mm is not None:
        if hasattr(mm, "throw_exception_if_processing_interrupted"):
            try:
                mm.throw_exception_if_processing_interrupted()
            except BaseException as e:   # noqa: B036 - that is what it is for
                return e
        if hasattr(mm, "InterruptProcessingException"):
            return mm.InterruptProcessingException()
    return libqdiff.QdiffCancelled("interrupted", libqdiff.QD_ERR_CANCELLED)


class QdiffSampler:
    """Text-to-image from a diffusers folder (SD1.5, SDXL, SD3, FLUX; SDNQ-quantized or not)."""

    CATEGORY = "sampling/qdiff"
    FUNCTION = "sample"
    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("IMAGE", "LATENT")
    DESCRIPTION = "Generates images with libqdiff (native CPU inference) from a diffusers folder."

    @classmethod
    def INPUT_TYPES(cls):
        model = _model_input()
        classes = _names(libqdiff.QD_LIST_SCHEDULER_CLASSES)
        samplers = [DIFFUSERS_DEFAULT] + _names(libqdiff.QD_LIST_SAMPLERS) + classes
        schedules = [DIFFUSERS_DEFAULT] + _names(libqdiff.QD_LIST_SCHEDULES)
        vae_files = _vae_approx_files()
        if vae_files is None:
            preview = ("STRING", {"default": "", "tooltip": "TAESD decoder file or vae/ folder for live previews; empty: none"})
        else:
            preview = ([PREVIEW_AUTO, PREVIEW_NONE] + vae_files,
                       {"default": PREVIEW_AUTO, "tooltip": "TAESD for live previews; auto: the family's from models/vae_approx"})
        return {
            "required": {
                "model": model,
                "prompt": ("STRING", {"multiline": True, "default": ""}),
                "negative_prompt": ("STRING", {"multiline": True, "default": "",
                                               "tooltip": "empty: none (SDXL then uses zero embeddings, as diffusers)"}),
                "steps": ("INT", {"default": 20, "min": 0, "max": 10000, "tooltip": "0: the family's default"}),
                "cfg": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "-1: the family's default (7.5 SD1.5, 5 SDXL, 7 SD3, off for FLUX); <= 1 disables"}),
                "width": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 8, "tooltip": "0: the model's native size"}),
                "height": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 8, "tooltip": "0: the model's native size"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
                "sampler_name": (samplers, {"default": DIFFUSERS_DEFAULT,
                                            "tooltip": "a ComfyUI sampler, a diffusers scheduler class, or the folder's own scheduler"}),
                "scheduler": (schedules, {"default": DIFFUSERS_DEFAULT,
                                          "tooltip": "the ComfyUI sampler's schedule (diffusers default: normal, simple for SD3/FLUX); "
                                                     "with a diffusers class only karras applies"}),
            },
            "optional": {
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64}),
                "guidance": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1,
                                       "tooltip": "FLUX.1-dev embedded guidance"}),
                "threads": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip": "0: all cores"}),
                "matmul": (list(libqdiff.QD_MATMUL), {"default": "auto",
                                                     "tooltip": "SDNQ layers: as configured, exact, or int8 matmul"}),
                "precision": (list(libqdiff.QD_PRECISION), {
                    "default": libqdiff.default_precision(),
                    "tooltip": "dense math: auto = bf16 where the CPU has AVX512_BF16 (about 1.6x faster; "
                               "images within ~35 dB PSNR of fp32), fp32 = the reference; the default "
                               "comes from $QD_PRECISION"}),
                "preview_vae": preview,
                "loras": ("QDIFF_LORAS", {"tooltip": "LoRAs from qdiff LoRA nodes, applied for this run "
                                                    "(the loaded weights stay as they are)"}),
                "latent_image": ("LATENT", {"tooltip": "image-to-image: start from these latents (e.g. VAEEncode's; "
                                                      "width/height follow them)"}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                      "tooltip": "with latent_image: how much of the schedule runs (diffusers' strength); "
                                                 "ComfyUI samplers: the last steps of steps/denoise"}),
                "mask": ("MASK", {"tooltip": "inpainting with latent_image or image: 1 = repaint, 0 = keep (as "
                                             "SetLatentNoiseMask; a LATENT's own noise_mask is used when this is not connected)"}),
                "image": ("IMAGE", {"tooltip": "image-to-image / inpainting from pixels instead of latent_image: encoded "
                                               "with the folder's VAE (the mean, as VAEEncode); 9-channel inpainting models "
                                               "need it with a mask (as InpaintModelConditioning)"}),
            },
        }

    def sample(self, model, prompt, negative_prompt, steps, cfg, width, height, seed, sampler_name, scheduler,
               batch_size=1, guidance=3.5, threads=0, matmul="auto", precision=None, preview_vae="", loras=None,
               latent_image=None, denoise=1.0, mask=None, image=None):
        folder = _resolve_folder(model)
        lib = libqdiff.load()
        kw = {}
        if sampler_name in (None, "", DIFFUSERS_DEFAULT) or sampler_name in lib.names(libqdiff.QD_LIST_SCHEDULER_CLASSES):
            if sampler_name not in (None, "", DIFFUSERS_DEFAULT):
                kw["scheduler"] = sampler_name
            if scheduler == "karras":
                kw["karras"] = 1
            elif scheduler not in (None, "", DIFFUSERS_DEFAULT):
                raise libqdiff.QdiffError(
                    f"scheduler '{scheduler}' goes with a ComfyUI sampler; with '{sampler_name}' use "
                    f"'{DIFFUSERS_DEFAULT}' or 'karras'", libqdiff.QD_ERR_ARG)
        else:
            kw["sampler"] = sampler_name
            if scheduler not in (None, "", DIFFUSERS_DEFAULT):
                kw["schedule"] = scheduler
        with CACHE.lock:
            ctx, m = CACHE.get(folder, threads)
            ctx.set_matmul(matmul)
            ctx.set_precision(precision or libqdiff.default_precision())
            p = libqdiff.make_params(lib, prompt, negative_prompt or None, width, height, steps, cfg, guidance,
                                     seed, batch_size, **kw)
            keep = libqdiff.set_loras(p, loras or ())   # the arrays p points into, alive for the run
            vae = CACHE.preview_vae(_resolve_preview_vae(preview_vae, m.family))
            factors = _vae_factors(m.folder)   # read before the run: a bad config fails fast
            if image is not None:
                if latent_image is not None:
                    raise libqdiff.QdiffError("give latent_image or image, not both", libqdiff.QD_ERR_ARG)
                init = self._init_image(p, image, denoise)
            else:
                init = self._init_latents(m, p, latent_image, denoise, factors)
            held_mask = self._mask(p, latent_image if image is None else init, mask)
            result = self._run(ctx, m, p, vae, factors)
            del keep, init, held_mask
            return result

    @staticmethod
    def _init_latents(m, p, latent_image, denoise, factors):
        """Point p at a LATENT's samples (ComfyUI's space: latent / scale + shift) converted to the
        model's ((x - shift) * scale); the tensor returned must stay alive for the run."""
        if latent_image is None:
            if denoise is not None and float(denoise) < 1.0:
                raise libqdiff.QdiffError("denoise < 1 needs a latent_image or an image to start from", libqdiff.QD_ERR_ARG)
            return None
        QdiffSampler._check_denoise(denoise)
        s = latent_image["samples"] if isinstance(latent_image, dict) else latent_image
        if s.dim() != 4:
            raise libqdiff.QdiffError(f"latent_image samples must be [B, C, h, w] (got {list(s.shape)})",
                                      libqdiff.QD_ERR_ARG)
        b, c, h, w = s.shape
        QdiffSampler._take_size(p, "latent_image", "latents", b, w * 8, h * 8)
        shape = libqdiff.latent_shape(m, p)
        channels = shape[2] // 4 if m.family == "flux" else shape[1]
        if c != channels:
            raise libqdiff.QdiffError(f"latent_image has {c} channels but this {m.family} model's latents have {channels}",
                                      libqdiff.QD_ERR_ARG)
        scale, shift = factors
        x = ((s.to(torch.float32) - shift) * scale).contiguous()
        p.init_latents = ctypes.cast(x.data_ptr(), ctypes.POINTER(ctypes.c_float))
        p.init_count = b
        p.strength = float(denoise)
        return x

    @staticmethod
    def _take_size(p, what, items, count, width, height):
        """The run's size from the start picture or latents (width/height 0 follow it); count
        must be 1 or the batch."""
        if (p.width and p.width != width) or (p.height and p.height != height):
            raise libqdiff.QdiffError(f"{what} is {width}x{height} pixels but width x height asks "
                                      f"{p.width}x{p.height} (0 follows the {what})", libqdiff.QD_ERR_ARG)
        if count not in (1, max(p.batch, 1)):
            raise libqdiff.QdiffError(f"{what} holds {count} {items} for a batch of {p.batch} (give 1 or {p.batch})",
                                      libqdiff.QD_ERR_ARG)
        p.width, p.height = width, height

    @staticmethod
    def _check_denoise(denoise):
        if not 0.0 < float(denoise) <= 1.0:
            raise libqdiff.QdiffError(f"denoise must be in (0, 1] (got {denoise})", libqdiff.QD_ERR_ARG)

    @staticmethod
    def _init_image(p, image, denoise):
        """Point p at an IMAGE ([B, H, W, 3] in [0, 1]) for the library to encode; the tensor
        returned must stay alive for the run."""
        QdiffSampler._check_denoise(denoise)
        if image.dim() != 4 or image.shape[-1] != 3:
            raise libqdiff.QdiffError(f"image must be [B, H, W, 3] (got {list(image.shape)})", libqdiff.QD_ERR_ARG)
        b, height, width, _ = image.shape
        QdiffSampler._take_size(p, "image", "pictures", b, width, height)
        x = image.to(torch.float32).contiguous()
        p.init_image = ctypes.cast(x.data_ptr(), ctypes.POINTER(ctypes.c_float))
        p.init_count = b
        p.strength = float(denoise)
        return x

    @staticmethod
    def _mask(p, latent_image, mask):
        """Point p at the inpainting mask: the MASK input, else the LATENT's "noise_mask" (ComfyUI's
        SetLatentNoiseMask), as [count, H, W] at the picture's size (1 = repaint). A mask of another
        size is first resized bilinearly to it (ComfyUI resizes straight to the latent grid: equal
        for masks at the picture's size). The tensor returned must stay alive for the run."""
        if mask is None and isinstance(latent_image, dict):
            mask = latent_image.get("noise_mask")
        if mask is None:
            return None
        if latent_image is None:
            raise libqdiff.QdiffError("a mask needs a latent_image or an image to keep (inpainting)", libqdiff.QD_ERR_ARG)
        mk = mask.to(torch.float32)
        if mk.dim() < 2 or mk.dim() > 4 or (mk.dim() == 4 and mk.shape[1] != 1):
            raise libqdiff.QdiffError(f"mask must be [H, W], [B, H, W] or [B, 1, H, W] (got {list(mk.shape)})",
                                      libqdiff.QD_ERR_ARG)
        mk = mk.reshape(-1, 1, mk.shape[-2], mk.shape[-1])
        if mk.shape[-2:] != (p.height, p.width):
            mk = torch.nn.functional.interpolate(mk, size=(p.height, p.width), mode="bilinear")
        mk = mk[:, 0].clamp(0.0, 1.0).contiguous()
        if mk.shape[0] not in (1, max(p.init_count, 1)):
            raise libqdiff.QdiffError(f"{mk.shape[0]} masks for {max(p.init_count, 1)} latents (give 1 or "
                                      f"{max(p.init_count, 1)})", libqdiff.QD_ERR_ARG)
        p.mask = ctypes.cast(mk.data_ptr(), ctypes.POINTER(ctypes.c_float))
        p.mask_count = mk.shape[0]
        return mk

    def _run(self, ctx, m, p, vae, factors):
        shape = libqdiff.image_shape(m, p)
        image = torch.empty(shape, dtype=torch.float32)
        lshape = libqdiff.latent_shape(m, p)
        latents = torch.empty(lshape, dtype=torch.float32)
        utils, mm = _comfy("utils"), _comfy("model_management")
        interrupted = getattr(mm, "processing_interrupted", None) if mm is not None else None
        pbar = utils.ProgressBar(1) if utils is not None and hasattr(utils, "ProgressBar") else None
        pending = {}   # the preview of the step being reported
        preview_side = _comfy_preview_args()[1]
        p.preview_max_size = preview_side   # qdiff shrinks the latents to ComfyUI's preview size before decoding

        def progress(step, total, elapsed):
            if interrupted is not None and interrupted():
                return True
            if pbar is not None:
                pbar.update_absolute(step, total, pending.pop(step, None))
            return False

        def preview(step, total, rgb, w, h):
            try:
                from PIL import Image
            except ImportError:
                return
            pending.clear()
            pending[step] = ("JPEG", Image.frombytes("RGB", (w, h), rgb), preview_side)

        try:
            if interrupted is not None:
                with _InterruptWatch(ctx, interrupted):
                    libqdiff.generate(m, p, image.data_ptr(), image.numel() * 4, latents.data_ptr(), latents.numel(),
                                      progress, preview if pbar is not None else None, vae)
            else:
                libqdiff.generate(m, p, image.data_ptr(), image.numel() * 4, latents.data_ptr(), latents.numel(),
                                  progress, preview if pbar is not None else None, vae)
        except libqdiff.QdiffCancelled:
            if interrupted is not None and interrupted():
                raise _interrupt_exception(mm) from None
            raise
        if m.family == "flux":
            latents = unpack_flux_latents(latents, shape[1], shape[2])
        scale, shift = factors
        return (image, {"samples": latents / scale + shift})


NODE_CLASS_MAPPINGS = {"QdiffSampler": QdiffSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"QdiffSampler": "qdiff Sampler"}

try:
    from .lora_node import QdiffLora
except ImportError:   # imported as a top-level module (tests, scripts)
    from lora_node import QdiffLora
NODE_CLASS_MAPPINGS["QdiffLora"] = QdiffLora
NODE_DISPLAY_NAME_MAPPINGS["QdiffLora"] = "qdiff LoRA"

try:
    from .vae_encode_node import QdiffVaeEncode
except ImportError:   # imported as a top-level module (tests, scripts)
    from vae_encode_node import QdiffVaeEncode
NODE_CLASS_MAPPINGS["QdiffVaeEncode"] = QdiffVaeEncode
NODE_DISPLAY_NAME_MAPPINGS["QdiffVaeEncode"] = "qdiff VAE Encode"
