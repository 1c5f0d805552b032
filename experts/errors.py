"""Errors shown to the user as one clear line (the CLI never prints a traceback for these)."""


class VisionRouterError(Exception):
    """Base error: its message is displayed to the user as it is."""


class ImageError(VisionRouterError):
    """An attached image could not be accepted (too big, not an image, truncated, ...)."""


class ExpertError(VisionRouterError):
    """An expert could not run: unknown name, bad arguments, missing engine or weights."""


class EngineMissing(ExpertError):
    """The expert's engine (an optional extra) is not installed or its weights are absent."""
