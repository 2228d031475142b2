# syntax=docker/dockerfile:1
# artstory-proxy: build with `docker build -t artstory-proxy .`, run with
# `docker run -p 8000:8000 -e REDIS_URL=redis://redis:6379/0 artstory-proxy` (or `docker compose up`).
# Every setting comes from the environment (README, "Configuration reference").

# Build stage: a virtual environment holding the proxy and its dependencies, nothing else.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
# The shipped configuration files (routes.toml, ...): setup.cfg installs them as data files.
COPY config ./config
COPY proxy ./proxy
# pip and setuptools are only needed to install: dropping them halves the venv (about 25 MB).
RUN /opt/venv/bin/pip install . \
    && /opt/venv/bin/pip uninstall --yes pip setuptools

# Final stage: the virtual environment and the configuration files, run as an unprivileged user.
FROM python:3.11-slim
# A numeric UID/GID, so that Kubernetes' runAsNonRoot can verify it (config/k8s/deployment.yaml).
# (Not "proxy": Debian already has a system user and group of that name.)
RUN groupadd --system --gid 10001 artstory \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /app --shell /usr/sbin/nologin artstory
COPY --from=build /opt/venv /opt/venv
COPY config /app/config
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PROXY_HOST=0.0.0.0 \
    PROXY_PORT=8000 \
    PROXY_ROUTES=/app/config/routes.toml \
    PROXY_LOG_FORMAT=json
USER 10001:10001
EXPOSE 8000
# The proxy drains on SIGTERM for PROXY_SHUTDOWN_GRACE seconds (default 25); give the engine's stop
# timeout a little more (compose.yaml: stop_grace_period; Kubernetes: terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
# Liveness only: /healthz never touches Redis (the proxy fails open when Redis is down).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PROXY_PORT', '8000'), timeout=2)"]
CMD ["artstory-proxy", "serve"]
