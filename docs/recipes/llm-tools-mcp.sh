#!/usr/bin/env bash
# `llm` with llm-tools-mcp: the experts as the `MCP` toolbox, `vision-router mcp` launched over stdio.
#
#   docs/recipes/llm-tools-mcp.sh /path/to/.venv/bin/vision-router [IMAGE] [MODEL]
#
# Pinned, in a venv of its own: llm-tools-mcp 0.4 imports `streamablehttp_client`, gone in mcp 2.x, so mcp < 2.
# Its toolbox asks the servers for their tools when it is built, so plain `llm tools list` shows an empty
# `MCP:`; name the toolbox (`llm tools list MCP`) to see them. With MODEL (an Ollama model, through
# llm-ollama and OLLAMA_HOST) the model is asked to use them.
set -euo pipefail
VR=${1:-$(command -v vision-router)}
IMAGE=$(realpath "${2:-$(dirname "$0")/../../router/data/demo.png}")
MODEL=${3:-}
DIR=${RECIPE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vision-router-recipes/llm}

[ -x "$DIR/bin/llm" ] || { python3 -m venv "$DIR" &&
  "$DIR/bin/pip" install -q 'llm==0.36' 'llm-tools-mcp==0.4' 'mcp>=1.24,<2' 'llm-ollama==0.19.1'; }

export LLM_USER_PATH="$DIR/llm-home" LLM_TOOLS_MCP_CONFIG_DIR="$DIR/llm-tools-mcp"
mkdir -p "$LLM_TOOLS_MCP_CONFIG_DIR"
cat >"$LLM_TOOLS_MCP_CONFIG_DIR/mcp.json" <<JSON
{"mcpServers": {"vision-router": {"command": "$VR", "args": ["mcp", "--allow-dir", "$(dirname "$IMAGE")"]}}}
JSON

"$DIR/bin/llm" tools list MCP | grep -E '^  [a-z]+\('
if [ -n "$MODEL" ]; then
  "$DIR/bin/llm" -m "ollama/$MODEL" -T MCP --td "Use the detect tool on $IMAGE and say what shapes it found."
fi
