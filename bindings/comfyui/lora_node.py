"""The "qdiff LoRA" ComfyUI node: adds a LoRA file and its strength to a QDIFF_LORAS list
(chain several), which the qdiff Sampler's optional `loras` input applies while it
generates. The sampler's model is only opened (and kept) by the sampler, so the LoRAs are
a per-run list, applied by libqdiff without changing the loaded weights: the same list as
the run before costs nothing more, another list swaps them, none runs the model as loaded.
"""
import os

try:
    from .sampler_node import _comfy
except ImportError:   # imported as a top-level module (tests, scripts)
    from sampler_node import _comfy

LORAS_TYPE = "QDIFF_LORAS"   # a tuple of (path, strength) pairs


def _lora_files():
    fp = _comfy("folder_paths")
    try:
        return list(fp.get_filename_list("loras")) if fp is not None else None
    except (KeyError, AttributeError):
        return None


def resolve_lora(name):
    """A models/loras name (inside ComfyUI) or a path, as a file path; libqdiff names what is
    wrong with a path that does not exist."""
    if os.path.isabs(name) or os.path.exists(name):
        return name
    fp = _comfy("folder_paths")
    if fp is not None:
        try:
            full = fp.get_full_path("loras", name)
            if full:
                return full
        except (KeyError, AttributeError):
            pass
    return name


class QdiffLora:
    """One LoRA for the qdiff Sampler (kohya, diffusers, PEFT or BFL names)."""

    CATEGORY = "sampling/qdiff"
    FUNCTION = "add"
    RETURN_TYPES = (LORAS_TYPE,)
    RETURN_NAMES = ("loras",)
    DESCRIPTION = ("A LoRA for the qdiff Sampler's loras input (chain several). PEFT folders: pick their "
                   "adapter_model.safetensors; alpha comes from the adapter_config.json beside it.")

    @classmethod
    def INPUT_TYPES(cls):
        files = _lora_files()
        if files is None:
            name = ("STRING", {"default": "", "tooltip": "path of a LoRA .safetensors file"})
        else:
            name = (files, {"tooltip": "a LoRA under models/loras"})
        return {
            "required": {
                "lora_name": name,
                "strength": ("FLOAT", {"default": 1.0, "min": -20.0, "max": 20.0, "step": 0.01,
                                       "tooltip": "the LoRA's scale (0: not applied)"}),
            },
            "optional": {
                "loras": (LORAS_TYPE, {"tooltip": "LoRAs chained before this one"}),
            },
        }

    def add(self, lora_name, strength, loras=None):
        return (tuple(loras or ()) + ((resolve_lora(lora_name), float(strength)),),)
