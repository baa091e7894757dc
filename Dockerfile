# The collector image: also runs the simulator (`simulate`) and migrations (`migrate`).
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Pinned dependencies first, so code changes reuse this layer.
COPY requirements.lock ./
RUN pip install --no-deps -r requirements.lock

# The generated protobuf module is part of collector/ (collector/proto).
COPY collector ./collector
COPY migrations ./migrations

RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin collector \
    && mkdir -p /app/var/spool && chown -R collector /app/var
USER collector

ENV COLLECTOR_METRICS_HOST=0.0.0.0 \
    COLLECTOR_SPOOL_DIR=/app/var/spool
EXPOSE 9108
# Healthy when the metrics endpoint answers; there is no custom status endpoint.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; b = urllib.request.urlopen('http://127.0.0.1:9108/metrics', timeout=4).read(); sys.exit(0 if b'collector_build_info' in b else 1)"]
ENTRYPOINT ["python", "-m", "collector"]
CMD ["run"]
