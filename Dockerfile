# One image for the API and the worker (docker-compose.yml picks the command).
# PyPI's Linux torch wheels bundle the CUDA runtime; the host needs only the
# NVIDIA driver + container toolkit for the worker's GPU reservation.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TD3_HOME=/var/lib/td3

WORKDIR /app

# dependencies first (cached while only the code changes)
COPY pyproject.toml ./
RUN mkdir -p td3core td3 api worker \
    && touch td3core/__init__.py td3/__init__.py api/__init__.py worker/__init__.py \
    && pip install -e . \
    && rm -rf td3core td3 api worker

COPY alembic.ini ./
COPY migrations ./migrations
COPY td3core ./td3core
COPY td3 ./td3
COPY api ./api
COPY worker ./worker
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 10001 td3 \
    && mkdir -p /var/lib/td3 && chown td3:td3 /var/lib/td3

USER td3
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=5 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)" || exit 1

# API (runs the migrations first); the worker service overrides this command.
CMD ["python", "-m", "td3", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]
