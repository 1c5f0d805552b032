#!/usr/bin/env bash
# MCP Inspector's CLI against `vision-router mcp --http --token ...`: list the tools, then run `detect` on an image.
#
#   vision-router mcp --http --port 8765 --token "$VISION_ROUTER_TOKEN" &
#   VISION_ROUTER_TOKEN=... docs/recipes/mcp-inspector.sh http://127.0.0.1:8765/mcp photo.png
#
# Pinned: plain `npx @modelcontextprotocol/inspector` on Node 20 resolves 0.15.0 (the newest release whose
# package.json does not ask for Node 22), and 0.15.0 has no --header, so the token cannot be sent.
# 2.12.0 has --header and ran here on Node 20.20 (npm warns about its `engines: node >= 22.19`).
set -euo pipefail
URL=${1:-http://127.0.0.1:8765/mcp}
IMAGE=${2:-$(dirname "$0")/../../router/data/demo.png}
TOKEN=${VISION_ROUTER_TOKEN:?set VISION_ROUTER_TOKEN to the --token the server was started with}
DIR=${RECIPE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vision-router-recipes/inspector}

mkdir -p "$DIR"
(cd "$DIR" && [ -x node_modules/.bin/mcp-inspector ] ||
  npm install --no-audit --no-fund --loglevel=error @modelcontextprotocol/inspector@2.12.0)
inspect() { (cd "$DIR" && npx --no-install mcp-inspector --cli "$URL" --transport http \
  --header "Authorization: Bearer $TOKEN" "$@"); }

inspect --method tools/list | grep -E '^      "name"'
# The image travels as a data: URL (over HTTP the server reads no local path unless --allow-dir).
inspect --method tools/call --tool-name detect --tool-arg "image=data:image/png;base64,$(base64 -w0 "$IMAGE")" |
  grep -o '"text": "[^"]*' | head -c 400
echo
