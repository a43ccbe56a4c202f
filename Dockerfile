# bss-relay service image. Non-root, exec-form entry point so SIGTERM reaches the process
# (the service drains in-flight commands on SIGTERM). Every Python package comes from the lock
# files at their exact, hash-checked versions (`make lock` refreshes them); nothing is resolved
# at build time. `make image-check` builds this file and smoke-tests the result.
FROM python:3.11-slim AS build
WORKDIR /src
# The locks first: this layer is rebuilt only when a pinned version changes.
COPY requirements.lock requirements-build.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements-build.lock \
 && pip install --no-cache-dir --require-hashes --prefix=/install -r requirements.lock
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY handlers handlers
COPY service service
# The project alone: its dependencies are in /install already, its build backend is the
# locked setuptools installed above.
RUN pip install --no-cache-dir --no-deps --no-build-isolation --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/bss-relay --create-home relay
COPY --from=build /install /usr/local
USER 10001
WORKDIR /var/lib/bss-relay
# Metrics and /healthz on all interfaces inside the container (the default outside one is
# loopback); the port is published or scraped by the platform.
ENV PYTHONUNBUFFERED=1 \
    STORE_URL=sqlite:////var/lib/bss-relay/bss-relay.db \
    RELAY_METRICS_HOST=0.0.0.0 \
    RELAY_METRICS_PORT=9464
# 9464: /metrics and /healthz of serve; 8090: `bss-relay console` (with --host 0.0.0.0).
EXPOSE 9464 8090
ENTRYPOINT ["bss-relay"]
CMD ["serve"]
