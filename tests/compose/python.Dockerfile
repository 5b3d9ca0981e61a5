# A stand-in for Docker Hub's python:3.11-slim (no registry is reachable from the test machines):
# Debian's Python 3.11 in a virtual environment first on PATH, so that `python` and `pip install`
# work as in the real image. The host's CA bundle lets pip reach the package index through the
# host's TLS proxy; a CPU build of torch, when the host has one on disk, is installed here so that
# the project's `pip install .` finds torch satisfied instead of downloading a CUDA build (6 GB).
ARG BASE=hpsearch-test/debian:bookworm
FROM ${BASE}
COPY host-ca.crt /etc/ssl/certs/host-ca.crt
ENV PATH=/usr/local/python/bin:$PATH PIP_CERT=/etc/ssl/certs/host-ca.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update -q && apt-get install -y -q --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /usr/local/python
COPY wheels/ /tmp/wheels/
RUN if ls /tmp/wheels/*.whl >/dev/null 2>&1; then pip install -q /tmp/wheels/*.whl; fi \
    && rm -rf /tmp/wheels
