# Tessera training image (GPU): the locked dependencies + the project; the entry point runs a component.
# Not built in CI (no Docker engine there); tests/components/test_pretrain_docker.py checks that every
# copied file exists and that the entry point is a real command.
#
#   docker build -f infra/docker/train.Dockerfile -t tessera-train:0.1.0 .
#   docker run --gpus all -v $PWD/data:/workspace/data -v $PWD/runs:/workspace/runs tessera-train:0.1.0
#   docker run --gpus all ... tessera-train:0.1.0 components.pretrain --params params.yaml --preset gpu
#   multi-GPU: --entrypoint torchrun tessera-train:0.1.0 --nproc_per_node 4 -m components.pretrain ...
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
# Python 3.11 (the project's version) from the deadsnakes archive; Ubuntu 24.04 ships 3.12.
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common ca-certificates git \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /workspace
# The exact, tested set of packages (torch's CUDA libraries come as nvidia-* wheels), then the project.
COPY requirements.lock ./
RUN pip install --upgrade pip && pip install -r requirements.lock
COPY pyproject.toml README.md ./
COPY src ./src
COPY components ./components
COPY flows ./flows
COPY serving ./serving
RUN pip install --no-deps .
COPY params.yaml params.cpu.yaml params.gpu.yaml ./

ENTRYPOINT ["python", "-m"]
CMD ["components.pretrain", "--params", "params.yaml", "--preset", "gpu", "--out", "runs/pretrain"]
