# The hpsearch worker image: hpsearch and its dependencies (PyPI's torch wheels include CUDA).
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    HPSEARCH_DATA=/data HPSEARCH_CACHE=/cache
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY studies ./studies
# Every writable mount point exists in the image, owned by the user the container runs as: a
# new named volume takes the ownership of the directory it is mounted over (a missing one is
# made root's, and then no worker can write its cache or a checkpoint). The user's id is fixed,
# 1000, because deploy/kubernetes runs the pods as that id (runAsUser, fsGroup).
RUN pip install . && useradd --create-home --uid 1000 hpsearch \
    && mkdir -p /cache /artifacts && chown hpsearch:hpsearch /cache /artifacts
USER hpsearch
ENTRYPOINT ["hpsearch"]
CMD ["worker", "--study", "catdog", "--wait", "86400"]
