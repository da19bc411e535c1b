# ATP service image: `atp-service serve` against the Redis named by ATP_REDIS_URL.
#
# The base is pinned by digest: the multi-platform index of the official python:3.11-slim-bookworm
# tag (Python 3.11.16 on Debian 12) when it was pinned. Refresh it deliberately, and review the change:
#   docker buildx imagetools inspect python:3.11-slim-bookworm   # the "Digest:" line, sha256:…
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY atp_service ./atp_service
COPY reservation ./reservation
COPY publishers ./publishers
COPY client ./client
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ./client .

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 atp && useradd --create-home --uid 10001 --gid 10001 atp
# Every third-party package at the version and hashes of requirements/service.lock (`make lock`),
# then the service and the client themselves, which add nothing to it.
COPY requirements/service.lock /tmp/service.lock
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --require-hashes -r /tmp/service.lock \
 && pip install --no-cache-dir --no-deps /wheels/*.whl \
 && rm -rf /wheels /tmp/service.lock
# Numeric, so that Kubernetes' runAsNonRoot can check it (deploy/kubernetes runs it as 10001 too).
USER 10001:10001
# Not demo mode, so bearer tokens are required: mount a callers file and set ATP_CALLERS_FILE
# (see docs/OPERATIONS.md#security), plus ATP_TLS_CERT/ATP_TLS_KEY for TLS.
# Inside a container the gRPC port must listen on all interfaces; so do the metrics (0.0.0.0, for
# the scraper of your platform): plain HTTP without authentication, so limit who reaches 9464, or
# set ATP_METRICS_HOST=127.0.0.1 (ATP_METRICS_PORT=-1: off).
# With ATP_REDIS_URL set the service writes no file: the root file system may be read-only.
ENV ATP_HOST=0.0.0.0 \
    ATP_PORT=50051 \
    ATP_METRICS_HOST=0.0.0.0 \
    ATP_METRICS_PORT=9464 \
    ATP_DEMO=false \
    PYTHONUNBUFFERED=1
EXPOSE 50051 9464
# Healthy once the service reports SERVING (grpc.health.v1): NOT_SERVING while it waits for Redis
# and recovers its shards (snapshot + log replay: the start period leaves room; raise it if
# atp_recovery_seconds says recovery takes longer) and from the first moment of a stop. The check
# reads the service's own settings: plaintext, TLS (the service's certificate, for the name
# ATP_HEALTH_SERVER_NAME when the certificate names neither 127.0.0.1 nor ATP_ADVERTISE_ADDRESS's
# host) and mutual TLS (ATP_HEALTH_TLS_CERT/ATP_HEALTH_TLS_KEY: a client certificate).
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "-m", "atp_service.app.healthcheck"]
# SIGTERM stops gracefully: health NOT_SERVING, drain calls for up to ATP_SHUTDOWN_GRACE_S (5 s),
# then each shard's final snapshot (up to 60 s more). Docker's default 10 s before SIGKILL cuts
# that short (nothing acknowledged is lost, but the next start replays more of the log): give
# `docker stop -t 90`, compose `stop_grace_period: 90s` (at least ATP_SHUTDOWN_GRACE_S + 60 s).
# Exit status 3 means a newer instance took over the keyspace: never restart it automatically
# (compose `restart: on-failure` would; see docs/OPERATIONS.md "Deploying").
STOPSIGNAL SIGTERM
ENTRYPOINT ["atp-service"]
CMD ["serve"]
