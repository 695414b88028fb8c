# l2r_submit: Learn2Reg AbdomenCTCT registration container.
#   GPU (default base):  docker build -t l2r_submit .
#   CPU only:            docker build -t l2r_submit:cpu --build-arg BASE=python:3.11-slim \
#                          --build-arg TORCH_INSTALL="torch --index-url https://download.pytorch.org/whl/cpu" .
# The base's torch is kept when it has one (requirements.txt asks only torch>=2.1); every other package
# is installed at the version of constraints.txt (scripts/make_constraints.py), so later builds get the same.
ARG BASE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE}

# pip arguments used only when the base image has no torch (the CPU-only build)
ARG TORCH_INSTALL="torch>=2.1"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /opt/l2r_submit

# dependencies first, in their own layer, at the locked versions
COPY requirements.txt constraints.txt ./
# hadolint ignore=DL3013
RUN python -c "import torch" 2>/dev/null || pip install --no-cache-dir ${TORCH_INSTALL}; \
    pip install --no-cache-dir -c constraints.txt -r requirements.txt

# then the package, its weights inside (package data): a regular, non-editable install; the sources go
COPY pyproject.toml README.md ./
COPY l2r_submit ./l2r_submit
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && rm -rf /opt/l2r_submit/l2r_submit /opt/l2r_submit/build /opt/l2r_submit/*.egg-info \
    && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin l2r \
    && mkdir -p /l2r/data /l2r/output \
    && chown 10001:10001 /l2r/output

USER 10001:10001
ENTRYPOINT ["l2r-container"]
