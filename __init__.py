"""ComfyUI entry point: clone the qdiff repository into ComfyUI/custom_nodes/, build
libqdiff (see README.md, "ComfyUI node"), restart ComfyUI. The nodes live in bindings/comfyui."""
from .bindings.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
