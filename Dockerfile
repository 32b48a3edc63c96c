# syntax=docker/dockerfile:1
# One image per service, from one file: `docker build --target auth_service .` (and package_service,
# validator_service, migrate). Every setting comes from the environment (DEPOT_*); nothing secret
# is baked in. The images are what ECS runs (deploy/) and what docker-compose.yml starts.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# Dependencies, from uv.lock only: no dev or local groups, no project install, no caches.
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv
FROM ${PYTHON_IMAGE} AS dependencies
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /build
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-default-groups --no-install-project --no-cache

# Amazon RDS's certificate authorities, which the services check the database's certificate against on
# AWS (DEPOT_DATABASE_SSL_ROOT_CERT, set by the stack). Fetched over HTTPS and checked to hold only RDS
# authorities; `--build-arg RDS_CA_BUNDLE_SHA256=<sha256>` pins the exact file (the build prints its
# sha256). Not pinned by default: AWS adds authorities to the bundle, and a stale pin fails every build.
FROM ${PYTHON_IMAGE} AS rds_ca
ARG RDS_CA_BUNDLE_URL=https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem
ARG RDS_CA_BUNDLE_SHA256=""
COPY docker/rds_ca_bundle.py /build/rds_ca_bundle.py
RUN python /build/rds_ca_bundle.py "$RDS_CA_BUNDLE_URL" /build/rds-ca-bundle.pem "$RDS_CA_BUNDLE_SHA256"

# What every service image shares: the virtualenv, common/, an unprivileged user.
FROM ${PYTHON_IMAGE} AS base
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DEPOT_LOG_FORMAT=json \
    DEPOT_ENVIRONMENT=production \
    UVICORN_HOST=0.0.0.0 \
    UVICORN_PORT=8000 \
    UVICORN_PROXY_HEADERS=true \
    FORWARDED_ALLOW_IPS=* \
    UVICORN_TIMEOUT_KEEP_ALIVE=65 \
    UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN=20 \
    UVICORN_ACCESS_LOG=false
# /var/lib/depot (a development signing key) and /run/depot (a service token file) belong to the
# user, so that volumes mounted there do too.
RUN groupadd --system --gid 10001 depot \
    && useradd --system --uid 10001 --gid depot --home-dir /app --shell /usr/sbin/nologin depot \
    && install --directory --owner=depot --group=depot --mode=0700 /var/lib/depot /run/depot
COPY --from=dependencies /opt/venv /opt/venv
COPY --from=rds_ca /build/rds-ca-bundle.pem /usr/local/share/depot/rds-ca-bundle.pem
WORKDIR /app
COPY common/ common/
USER 10001:10001
EXPOSE 8000
# uvicorn (settings above, as UVICORN_* variables): proxy headers from the load balancer (only it
# reaches a task; FORWARDED_ALLOW_IPS may be narrowed to the VPC), keep-alive above the idle timeout
# of the proxy in front (compose's nginx: 60 s), and a graceful shutdown on SIGTERM within compose's
# 30 s stop grace period. On AWS the task definition sets both from the ALB's idle timeout and ECS's
# stop timeout (deploy/depot_stack.py); the command line names neither, so the environment decides.
# The services log their own access lines. Each target below names its app; the health check, its prefix.
# The health check is liveness (the process answers), never readiness: a dependency that is away
# must not get every container restarted; readiness is for whoever routes traffic (the ALB, nginx).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000' + os.environ['DEPOT_PREFIX'] + '/health', timeout=4).status == 200 else 1)"]

FROM base AS auth_service
ENV DEPOT_PREFIX=/auth
COPY auth_service/ auth_service/
CMD ["uvicorn", "--factory", "auth_service.app:create_app"]

FROM base AS package_service
ENV DEPOT_PREFIX=/packages
COPY package_service/ package_service/
CMD ["uvicorn", "--factory", "package_service.app:create_app"]

FROM base AS validator_service
ENV DEPOT_PREFIX=/validate
COPY validator_service/ validator_service/
CMD ["uvicorn", "--factory", "validator_service.app:create_app"]

# The pages: no database, no S3; at / (its health check at /health/ready, so DEPOT_PREFIX is empty).
FROM base AS web_service
ENV DEPOT_PREFIX=""
COPY web_service/ web_service/
CMD ["uvicorn", "--factory", "web_service.app:create_app"]

# Migrations of every schema (each service's history lives in its own folder), run once per release.
FROM base AS migrate
COPY auth_service/ auth_service/
COPY package_service/ package_service/
COPY validator_service/ validator_service/
HEALTHCHECK NONE
CMD ["python", "-m", "common.migrations", "upgrade"]
