"""comfyui-ltx-fp8: load LTX-2 / LTX-2.3 fp8 checkpoints correctly and mix fp8-cast, scaled-mm and
bf16 models in one ComfyUI graph. The host imports this file (ComfyUI V3 `comfy_entrypoint`)."""

WEB_DIRECTORY = "./web"

try:
    from comfy_api.latest import ComfyExtension, io
except ImportError:  # imported outside ComfyUI (pytest collecting the repo root, `python -m quant`)
    ComfyExtension = None

if ComfyExtension is not None:
    from .nodes import NODES

    class LTXFP8Extension(ComfyExtension):
        async def get_node_list(self) -> list[type[io.ComfyNode]]:
            return list(NODES)

    async def comfy_entrypoint() -> LTXFP8Extension:
        return LTXFP8Extension()
