"""How to install an extra, worded for the way this copy was installed.

The package is on no index, so ``pip install 'ollama-vision-router[mcp]'`` fails for nearly everyone. The
command that works depends on where this copy came from:

- a source checkout (an editable install, or the tree on ``PYTHONPATH``): ``pip install -e '/path/to/it[mcp]'``;
- a directory, wheel, archive URL or VCS URL: the same place again with the extra (PEP 610's
  ``direct_url.json`` in the installed distribution says which);
- an index (should it ever be published on one): the plain name with the extra;
- the project's container image (its Dockerfile sets ``VISION_ROUTER_IMAGE`` and ``VISION_ROUTER_EXTRAS``): a
  pip install into a running container is lost with it, so the hint says how to rebuild the image instead.
"""

from __future__ import annotations

import functools
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote, urlparse

DIST = "ollama-vision-router"
_CHECKOUT = Path(__file__).resolve().parents[1]  # experts/ sits at the top of a checkout
IMAGE_ENV = "VISION_ROUTER_IMAGE"  # set by the Dockerfile: the image's name
EXTRAS_ENV = "VISION_ROUTER_EXTRAS"  # set by the Dockerfile: the extras it was built with


class Origin(NamedTuple):
    """Where this copy was installed from: ``kind`` is ``checkout``, ``dir``, ``file``, ``url``, ``vcs``,
    ``index`` or ``image``; ``where`` the path or URL (empty for ``index``; for ``image`` the image's name and
    the extras it was built with, ``ollama-vision-router[onnx,serve]``)."""

    kind: str
    where: str = ""


def install_hint(extra: str) -> str:
    """The pip command that adds ``extra`` to this installation, e.g. ``pip install -e '/src/ovr[mcp]'``."""
    return hint_for(extra, origin())


def hint_for(extra: str, where_from: Origin) -> str:
    """The pip command that adds ``extra`` to a copy installed from ``where_from``."""
    kind, where = where_from
    if kind == "image":
        return _rebuild_hint(extra, where)
    if kind == "checkout":
        return f"pip install -e {_quote(f'{where}[{extra}]')}"
    if kind in ("dir", "file"):
        return f"pip install {_quote(f'{where}[{extra}]')}"
    if kind in ("url", "vcs"):
        return f"pip install {_quote(f'{DIST}[{extra}] @ {where}')}"
    return f"pip install {_quote(f'{DIST}[{extra}]')}"


@functools.lru_cache(maxsize=1)
def origin() -> Origin:
    """Where the running copy came from (read once per process)."""
    image = os.environ.get(IMAGE_ENV, "").strip()
    if image:
        return Origin("image", f"{image}[{os.environ.get(EXTRAS_ENV, '').strip()}]")
    if _is_checkout(_CHECKOUT):
        return Origin("checkout", str(_CHECKOUT))
    try:
        text = metadata.distribution(DIST).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        text = None
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    return origin_from_direct_url(data) if isinstance(data, dict) else Origin("index")


def origin_from_direct_url(data: dict[str, Any]) -> Origin:
    """:class:`Origin` from a PEP 610 ``direct_url.json`` document."""
    url = str(data.get("url") or "")
    vcs = data.get("vcs_info")
    if isinstance(vcs, dict) and url:
        commit = vcs.get("commit_id") or vcs.get("requested_revision")  # the same version again
        return Origin("vcs", f"{vcs.get('vcs', 'git')}+{url}" + (f"@{commit}" if commit else ""))
    parsed = urlparse(url)
    if parsed.scheme != "file":
        return Origin("url", url) if url else Origin("index")
    path = unquote(parsed.path)
    info = data.get("dir_info")
    if isinstance(info, dict):
        return Origin("checkout" if info.get("editable") else "dir", path)
    return Origin("file", path)


def _rebuild_hint(extra: str, where: str) -> str:
    """How to get ``extra`` into the project's image: rebuild it with the extra added to its build argument."""
    image, _, rest = where.partition("[")
    extras = [e.strip() for e in rest.rstrip("]").split(",") if e.strip()]
    wanted = ",".join([*extras, extra] if extra not in extras else extras)
    return (
        f"rebuild the image with --build-arg EXTRAS={wanted} "
        f"(docker build --build-arg EXTRAS={wanted} -t {image or DIST} .; docs/deploy.md)"
    )


def _is_checkout(root: Path) -> bool:
    """A source tree of this project (its pyproject.toml names it), not site-packages."""
    try:
        text = (root / "pyproject.toml").read_text("utf-8")
    except OSError:
        return False
    return f'name = "{DIST}"' in text


def _quote(arg: str) -> str:
    # Single quotes keep the shell away from the brackets; a path with a quote in it is rare enough.
    return f"'{arg}'" if "'" not in arg else json.dumps(arg)


__all__ = ["Origin", "hint_for", "install_hint", "origin", "origin_from_direct_url"]
