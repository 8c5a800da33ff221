"""Driving the real ComfyUI frontend in headless Chromium (Playwright) for tests and tools."""
