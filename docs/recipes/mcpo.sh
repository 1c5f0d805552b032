#!/usr/bin/env bash
# mcpo (MCP -> OpenAPI, for Open WebUI's "OpenAPI" tool servers) in front of `vision-router mcp` over stdio.
#
#   docs/recipes/mcpo.sh /path/to/.venv/bin/vision-router /folder/with/images
#
# Pinned, in a venv of its own: mcpo 0.0.20 imports `streamablehttp_client`, which mcp 2.x no longer has
# (ImportError at start), so mcp < 2; and it passes ssl_certfile= to FastAPI(), which FastAPI >= 0.145 refuses.
set -euo pipefail
VR=${1:-$(command -v vision-router)}
IMAGES=$(cd "${2:-$(dirname "$0")/../../router/data}" && pwd)
PORT=${MCPO_PORT:-8000}
KEY=${MCPO_KEY:-top-secret}
DIR=${RECIPE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vision-router-recipes/mcpo}

[ -x "$DIR/bin/mcpo" ] || { python3 -m venv "$DIR" &&
  "$DIR/bin/pip" install -q 'mcpo==0.0.20' 'mcp>=1.24,<2' 'fastapi<0.145'; }

"$DIR/bin/mcpo" --host 127.0.0.1 --port "$PORT" --api-key "$KEY" -- "$VR" mcp --allow-dir "$IMAGES" \
  >"$DIR/mcpo.log" 2>&1 &
MCPO=$!
trap 'kill $MCPO 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "127.0.0.1:$PORT/openapi.json" >/dev/null && break; sleep 0.5; done

echo "routes: $(curl -s "127.0.0.1:$PORT/openapi.json" | python3 -c 'import json,sys; print(" ".join(sorted(json.load(sys.stdin)["paths"])))')"
IMAGE=$(ls "$IMAGES"/*.png | head -1)
echo "POST /detect {image: $IMAGE}:"
curl -s -X POST "127.0.0.1:$PORT/detect" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
  -d "{\"image\": \"$IMAGE\"}" | head -c 300
echo
echo "without the key: HTTP $(curl -s -o /dev/null -w '%{http_code}' -X POST "127.0.0.1:$PORT/detect" \
  -H 'Content-Type: application/json' -d "{\"image\": \"$IMAGE\"}")"
