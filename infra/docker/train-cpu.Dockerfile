# Tessera training image for the CPU (small runs): the locked dependencies with PyTorch's CPU wheels.
# Not built in CI (no Docker engine there); tests/components/test_pretrain_docker.py checks that every
# copied file exists and that the entry point is a real command.
#
#   docker build -f infra/docker/train-cpu.Dockerfile -t tessera-train-cpu:0.1.0 .
#   docker run -v $PWD/data:/workspace/data -v $PWD/runs:/workspace/runs tessera-train-cpu:0.1.0
#   docker run ... tessera-train-cpu:0.1.0 components.pretrain --params params.yaml --preset cpu
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
WORKDIR /workspace
COPY requirements.lock ./
# The lock names torch's CUDA build and its nvidia-* libraries; take the same torch/torchvision versions
# from PyTorch's CPU index instead (about 10x smaller) and everything else exactly as locked.
RUN grep -vE '^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)==' requirements.lock > /tmp/req.txt \
 && pip install --upgrade pip \
 && pip install --index-url https://download.pytorch.org/whl/cpu \
      "$(grep -E '^torch==' requirements.lock)" "$(grep -E '^torchvision==' requirements.lock)" \
 && pip install -r /tmp/req.txt
COPY pyproject.toml README.md ./
COPY src ./src
COPY components ./components
COPY flows ./flows
COPY serving ./serving
RUN pip install --no-deps .
COPY params.yaml params.cpu.yaml params.gpu.yaml ./

ENTRYPOINT ["python", "-m"]
CMD ["components.pretrain", "--params", "params.yaml", "--out", "runs/pretrain"]
