"""The "qdiff VAE Encode" ComfyUI node: an IMAGE to a LATENT with the VAE of a diffusers
folder, as ComfyUI's VAEEncode does it (the encoder's mean, sides cropped to multiples of
8, the LATENT in the VAE's own space: latent / scaling_factor + shift_factor). Feed it to
the qdiff Sampler's latent_image with denoise < 1 for image-to-image.
"""
import torch

try:
    from . import libqdiff
    from .sampler_node import CACHE, _model_input, _resolve_folder, _vae_factors
except ImportError:   # imported as a top-level module (tests, scripts)
    import libqdiff
    from sampler_node import CACHE, _model_input, _resolve_folder, _vae_factors


class QdiffVaeEncode:
    """A picture to latents with the model folder's own VAE (no ComfyUI VAE loader needed)."""

    CATEGORY = "sampling/qdiff"
    FUNCTION = "encode"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("LATENT",)
    DESCRIPTION = "Encodes an IMAGE with the diffusers folder's VAE for the qdiff Sampler's latent_image."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": _model_input(), "pixels": ("IMAGE",)},
                "optional": {"threads": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip": "0: all cores"}),
                             "precision": (list(libqdiff.QD_PRECISION), {
                                 "default": libqdiff.default_precision(),
                                 "tooltip": "the encoder's dense math (auto = bf16 where the CPU has AVX512_BF16, "
                                            "fp32 = the reference); set per run, whatever the sampler last used; "
                                            "the default comes from $QD_PRECISION"})}}

    def encode(self, model, pixels, threads=0, precision=None):
        folder = _resolve_folder(model)
        if pixels.dim() != 4 or pixels.shape[-1] < 3:
            raise libqdiff.QdiffError(f"pixels must be an IMAGE [B, H, W, 3] (got {list(pixels.shape)})",
                                      libqdiff.QD_ERR_ARG)
        b, h, w = pixels.shape[0], pixels.shape[1] // 8 * 8, pixels.shape[2] // 8 * 8
        if h == 0 or w == 0:
            raise libqdiff.QdiffError(f"the image is {pixels.shape[2]}x{pixels.shape[1]}: at least 8x8 pixels are needed",
                                      libqdiff.QD_ERR_ARG)
        img = pixels[:, :h, :w, :3].to(torch.float32).contiguous()   # ComfyUI crops to the VAE's multiple
        scale, shift = _vae_factors(folder)
        with CACHE.lock:
            ctx, m = CACHE.get(folder, threads)   # the sampler's cached model and context
            ctx.set_precision(precision or libqdiff.default_precision())   # this node's, not the last sampler run's
            vae = libqdiff.PreviewVae(ctx, f"{m.folder}/vae")
            try:
                c = 16 if m.family in ("sd3", "flux") else 4
                latent = torch.empty((b, c, h // 8, w // 8), dtype=torch.float32)
                vae.encode(img.data_ptr(), b, w, h, latent.data_ptr())
            finally:
                vae.close()
        return ({"samples": latent / scale + shift},)
