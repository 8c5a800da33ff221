"""The seam between the quant core (torch only) and the ComfyUI host. Imports `comfy`."""
