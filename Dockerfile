# syntax=docker/dockerfile:1
# Build stage: a virtual environment with the proxy and its dependencies.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY proxy ./proxy
COPY config ./config
RUN /opt/venv/bin/pip install --upgrade pip && /opt/venv/bin/pip install .

# Final stage: the virtual environment and the configuration, run as a non-root user.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin proxy
COPY --from=build /opt/venv /opt/venv
COPY config /app/config
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PROXY_HOST=0.0.0.0 \
    PROXY_PORT=8000 \
    PROXY_ROUTES=/app/config/routes.toml \
    PROXY_LOG_FORMAT=json
USER proxy
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PROXY_PORT', '8000'), timeout=2)"]
CMD ["artstory-proxy", "serve"]
