"""`vision-router doctor`: is Ollama there, is the model, and can each expert run?"""

from __future__ import annotations

import json
from typing import Any

import click

from router.commands import common
from router.commands.common import settings_from
from router.core.config import BASE_MODEL


@click.command("doctor")
@click.option("-m", "--model", help="Ollama model to check (default qwen3-vision)")
@click.option("--ollama-host", help="Ollama address (default OLLAMA_HOST, else 127.0.0.1:11434)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def doctor(ctx, model, ollama_host, as_json):
    """Check Ollama, the model, and every expert's engine and weights."""
    import ollama

    from router.core.ollama_host import resolve_host
    from router.core.protocol import PROTOCOL_MARKER

    settings = settings_from(ctx, model=model, ollama_host=ollama_host)
    host = resolve_host(settings.ollama_host)
    checks: list[dict[str, Any]] = []
    client = ollama.Client(host=host, timeout=5)
    try:
        version = client._client.get("/api/version").json().get("version", "?")
        checks.append({"check": "ollama", "ok": True, "detail": f"reachable at {host} (version {version})"})
        try:
            shown = client.show(settings.model)
            has = PROTOCOL_MARKER in (shown.modelfile or "")
            caps = ", ".join(shown.capabilities or []) or "unknown"
            detail = f"'{settings.model}' present (capabilities: {caps}); " + (
                "its SYSTEM teaches the tag protocol" if has
                else "no tag protocol in its SYSTEM: the router will send it as a system message")
            checks.append({"check": "model", "ok": True, "detail": detail})
        except ollama.ResponseError as exc:
            hint = (f"run `ollama pull {BASE_MODEL} && ollama create {settings.model} -f Modelfile`"
                    if exc.status_code == 404 else exc.error)
            checks.append({"check": "model", "ok": False, "detail": f"'{settings.model}' missing: {hint}"})
    except Exception:
        checks.append({"check": "ollama", "ok": False,
                       "detail": f"not reachable at {host}: start `ollama serve` or set OLLAMA_HOST / --ollama-host"})
    reg = common.configured_registry(settings)
    for name in reg.names():
        try:
            st = reg.get(name).status()
        except Exception as exc:
            st = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        detail = "; ".join(f"{k}: {v}" for k, v in st.items() if k != "ok")
        checks.append({"check": f"expert {name}", "ok": bool(st.get("ok")), "detail": detail})
    for name, err in reg.load_errors.items():
        checks.append({"check": f"plugin {name}", "ok": False, "detail": err})
    cache = settings.resolved_cache_dir()
    checks.append({"check": "cache", "ok": True, "detail": cache or "memory only"})
    if as_json:
        click.echo(json.dumps({"checks": checks}, indent=2, ensure_ascii=False))
    else:
        for c in checks:
            click.echo(f"[{'ok' if c['ok'] else '!!'}] {c['check']:<16} {c['detail']}")
    if not all(c["ok"] for c in checks if c["check"] in ("ollama", "model")):
        ctx.exit(1)
