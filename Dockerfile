# The hpsearch worker image: hpsearch and its dependencies (PyPI's torch wheels include CUDA).
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    HPSEARCH_DATA=/data HPSEARCH_CACHE=/cache
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY studies ./studies
RUN pip install . && useradd --create-home hpsearch && mkdir -p /cache && chown hpsearch /cache
USER hpsearch
ENTRYPOINT ["hpsearch"]
CMD ["worker", "--study", "catdog", "--wait", "86400"]
