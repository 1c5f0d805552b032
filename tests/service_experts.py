"""Small experts for the expert-service tests, loaded by the service subprocess with
``--import tests.service_experts`` (its ``register`` hook is called like an entry point)."""

from __future__ import annotations

import time

from pydantic import Field

from experts.base import Expert, ExpertArgs
from experts.cancel import Cancelled, check_cancelled
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


class StepsArgs(ExpertArgs):
    seconds: float = Field(30.0, ge=0, le=600, description="How long the work takes.")


class StepsExpert(Expert):
    """Slow work in 10 ms steps with a cancellation check between them, as real experts check between the
    steps of their pipelines. Appends ``<event> <unix time>`` lines (start, stopped, finished) to the file
    its ``log`` setting names, so a test sees when the work really stopped."""

    name = "steps"
    description = "Works for a while in small steps (a test expert)."
    Args = StepsArgs

    def _record(self, event: str) -> None:
        path = self.config.get("log")
        if path:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(f"{event} {time.time():.6f}\n")

    def _analyze(self, image, args: StepsArgs):
        self._record("start")
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < args.seconds:
                check_cancelled()
                time.sleep(0.01)
        except Cancelled:
            self._record("stopped")
            raise
        self._record("finished")
        return self.new_result(image, caption=f"worked {args.seconds:g} s")


def register(register):
    register(EchoExpert)
    register(StepsExpert)
