# ATP service image: `atp-service serve` against the Redis named by ATP_REDIS_URL.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY atp_service ./atp_service
COPY reservation ./reservation
COPY publishers ./publishers
COPY client ./client
RUN pip wheel --no-cache-dir --wheel-dir /wheels ./client .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 atp
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER atp
# Not demo mode, so bearer tokens are required: mount a callers file and set ATP_CALLERS_FILE
# (see docs/OPERATIONS.md#security), plus ATP_TLS_CERT/ATP_TLS_KEY for TLS.
# Inside a container the gRPC port must listen on all interfaces; metrics stay
# opt-in on 0.0.0.0 for the scraper of your platform (set ATP_METRICS_HOST).
ENV ATP_HOST=0.0.0.0 \
    ATP_PORT=50051 \
    ATP_METRICS_HOST=0.0.0.0 \
    ATP_METRICS_PORT=9464 \
    ATP_DEMO=false \
    PYTHONUNBUFFERED=1
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD python -c "import grpc,sys;from grpc_health.v1 import health_pb2 as h,health_pb2_grpc as g;c=grpc.insecure_channel('127.0.0.1:50051');sys.exit(0 if g.HealthStub(c).Check(h.HealthCheckRequest(),timeout=2).status==h.HealthCheckResponse.SERVING else 1)"
ENTRYPOINT ["atp-service"]
CMD ["serve"]
