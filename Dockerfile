# bss-relay service image. Non-root, exec-form entry point so SIGTERM reaches the process
# (the service drains in-flight commands on SIGTERM).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY handlers handlers
COPY service service
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/bss-relay --create-home relay
COPY --from=build /install /usr/local
USER relay
WORKDIR /var/lib/bss-relay
ENV PYTHONUNBUFFERED=1 \
    STORE_URL=sqlite:////var/lib/bss-relay/bss-relay.db
EXPOSE 18080
ENTRYPOINT ["bss-relay"]
CMD ["serve"]
