# syntax=docker/dockerfile:1.7
# CPU worker image (see OPERATIONS.md, "Images"). Build from the repository root:
#   docker build -f deploy/docker/worker-cpu.Dockerfile -t dfd-worker:cpu .
# Build arguments:
#   CHECKPOINT       path (inside the build context) of a checkpoint to bake in as
#                    /models/detector.pt; without it, mount one there or set DFD_CHECKPOINT.
#   TORCH_INDEX_URL  extra package index for torch, e.g. https://download.pytorch.org/whl/cpu
#                    for CPU-only wheels; PyPI's torch brings ~3 GB of CUDA libraries.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_INDEX_URL=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/src/deploy/docker/constraints-worker.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY producer producer
COPY models models
COPY worker worker
COPY deploy deploy
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} ".[worker]"

FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin dfd
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DFD_CHECKPOINT=/models/detector.pt
ARG CHECKPOINT=""
RUN --mount=type=bind,target=/context \
    if [ -n "$CHECKPOINT" ]; then install -D -m 0444 "/context/$CHECKPOINT" /models/detector.pt; fi
USER 10001
# The worker's metrics_port default (tests/unit/test_deploy.py keeps them equal).
EXPOSE 9100
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "deploy.healthcheck"]
ENTRYPOINT ["python", "-m", "worker"]
