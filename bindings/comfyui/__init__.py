"""qdiff's ComfyUI node pack: "qdiff Sampler", "qdiff LoRA" and "qdiff VAE Encode", backed by libqdiff through ctypes."""
from .sampler_node import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
