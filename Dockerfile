# The router image: `vision-router serve` (the Ollama-compatible proxy) with the OCR (PP-OCR in ONNX), OpenCV
# and people experts. The same Dockerfile builds the heavy experts' sibling images:
#   docker build -t ollama-vision-router .                                       # router (onnx,people,serve)
#   docker build -t ollama-vision-router:caption --build-arg EXTRAS=caption,serve .   # `expert serve caption`
# Build arguments: EXTRAS (the pip extras, docs/install.md), PYTHON_IMAGE (the base). docs/deploy.md has the rest.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: install into a venv; nothing of this stage but the venv reaches the final image --------------------
FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=onnx,people,serve
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/vision-router
WORKDIR /src
# Dependencies first, from pyproject.toml alone (empty packages and readme stand in for the rest), so a change to
# the code or the README rebuilds only the last layer below instead of downloading every wheel again.
COPY pyproject.toml ./
RUN mkdir router experts && touch router/__init__.py experts/__init__.py README.md \
    && /opt/vision-router/bin/pip install "./[${EXTRAS}]" \
    && rm -rf router experts build *.egg-info README.md
COPY README.md ./
COPY router ./router
COPY experts ./experts
# Not editable: the venv holds a plain copy of the package, so /src stays behind in this stage. Bytecode is
# compiled here (pip's default) because the non-root user cannot write __pycache__ at run time: a cold start
# would compile every module again.
RUN /opt/vision-router/bin/pip install --no-deps --force-reinstall . \
    && /opt/vision-router/bin/pip uninstall -y -q pip setuptools wheel

# --- run --------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG EXTRAS=onnx,people,serve
# Install hints inside the container read these: "rebuild the image with --build-arg EXTRAS=...", not a pip
# install into a running container (experts/install.py).
ENV VISION_ROUTER_IMAGE=ollama-vision-router \
    VISION_ROUTER_EXTRAS=${EXTRAS} \
    PATH=/opt/vision-router/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/vision \
    VISION_ROUTER_CONFIG=/etc/vision-router/config.toml \
    VISION_ROUTER_CACHE=/data/cache \
    HF_HOME=/data/huggingface
COPY --from=build /opt/vision-router /opt/vision-router
# A fixed uid so a volume's files keep one owner across rebuilds; the volume folders exist and belong to it,
# so a fresh named volume mounted there is writable by it (Docker and Podman copy the folder's owner). No VOLUME
# line: it would leave an anonymous volume behind every container run without one; mount a named volume at
# /data/cache (compose.yaml does) to keep the result cache.
RUN groupadd --system --gid 10001 vision \
    && useradd --system --uid 10001 --gid vision --home-dir /home/vision --create-home --shell /usr/sbin/nologin vision \
    && mkdir -p /data/cache /data/huggingface /etc/vision-router \
    && chown -R vision:vision /data \
    && printf '%s\n' '# vision-router settings: mount your own file here (every key: docs/config.md).' \
       > /etc/vision-router/config.toml
USER vision
WORKDIR /home/vision
EXPOSE 11435
# Listen on every interface of the container: the container's own network is the boundary, and compose.yaml
# publishes the port on the host's loopback only. Set VISION_ROUTER_TOKEN to require a bearer token.
ENTRYPOINT ["vision-router"]
CMD ["serve", "--host", "0.0.0.0", "--allow-remote"]
# No curl in a slim image: the venv's Python asks the health endpoint (200 while the process serves, also when
# Ollama is down: /_vision/health says "degraded" then, and the router still answers with Ollama's errors).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:11435/_vision/health', timeout=4)"]
