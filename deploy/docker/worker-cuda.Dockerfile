# syntax=docker/dockerfile:1.7
# GPU worker image on NVIDIA's CUDA runtime base (see OPERATIONS.md, "Images"). Build from the
# repository root:
#   docker build -f deploy/docker/worker-cuda.Dockerfile -t dfd-worker:cuda .
# Run with a GPU (`docker run --gpus 1 ...`, or `nvidia.com/gpu: 1` in Kubernetes) and
# DFD_DEVICE=cuda. torch's PyPI wheels carry their own CUDA libraries; the base image supplies the
# NVIDIA container-runtime wiring. Build argument CHECKPOINT: path (inside the build context) of a
# checkpoint to bake in as /models/detector.pt; without it, mount one there or set DFD_CHECKPOINT.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS builder
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/src/deploy/docker/constraints-worker.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY producer producer
COPY models models
COPY worker worker
COPY deploy deploy
RUN python3.12 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir ".[worker]"

FROM ${CUDA_IMAGE} AS runtime
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin dfd
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DFD_CHECKPOINT=/models/detector.pt \
    DFD_DEVICE=cuda
ARG CHECKPOINT=""
RUN --mount=type=bind,target=/context \
    if [ -n "$CHECKPOINT" ]; then install -D -m 0444 "/context/$CHECKPOINT" /models/detector.pt; fi
USER 10001
# The worker's metrics_port default (tests/unit/test_deploy.py keeps them equal).
EXPOSE 9100
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "deploy.healthcheck"]
ENTRYPOINT ["python", "-m", "worker"]
