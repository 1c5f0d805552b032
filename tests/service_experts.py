"""Small experts for the expert-service tests, loaded by the service subprocess with
``--import tests.service_experts`` (its ``register`` hook is called like an entry point)."""

from __future__ import annotations

import time

from pydantic import Field

from experts.base import Expert, ExpertArgs
from experts.errors import EngineMissing, ExpertError


class EchoArgs(ExpertArgs):
    query: str | None = Field(None, description="Text to echo back.")
    delay: float = Field(0.0, ge=0, le=60, description="Seconds to wait before answering.")
    fail: str | None = Field(None, description="'error', 'engine' or 'bug': fail that way.")


class EchoExpert(Expert):
    name = "echo"
    aliases = ("repeat",)
    description = "Echoes its query and the image size (a test expert)."
    Args = EchoArgs
    positional = "query"

    def status(self):
        return {"ok": True, "engine": "echo", "model": "none", "device": "cpu"}

    def _analyze(self, image, args: EchoArgs):
        if args.delay:
            time.sleep(args.delay)
        if args.fail == "error":
            raise ExpertError("echo: asked to fail")
        if args.fail == "engine":
            raise EngineMissing("echo: engine missing; install the [echo] extra")
        if args.fail == "bug":
            raise RuntimeError("boom")
        return self.new_result(
            image,
            caption=f"echo: {args.query}",
            attributes={"width": image.width, "height": image.height, "format": image.format},
        )


def register(register):
    register(EchoExpert)
