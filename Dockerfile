# The collector image: also runs the simulator (`simulate`) and migrations (`migrate`).
#
# The first stage builds the wheel, migrations inside the package (collector/db/migrations);
# the second installs it with the pinned dependencies. So the image runs what `pip install`
# gives users (tests/ops/test_package.py installs the same wheel in a fresh venv), and nothing
# in the working directory can shadow the installed package.
FROM python:3.11.11-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY migrations ./migrations
# collector/db/migrations is a link to ../../migrations: the build copies the files it points to.
COPY collector ./collector
RUN pip wheel --no-deps --no-cache-dir --disable-pip-version-check -w /dist .

FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Pinned dependencies first, so code changes reuse this layer.
COPY requirements.lock /tmp/requirements.lock
RUN pip install --no-deps -r /tmp/requirements.lock && rm /tmp/requirements.lock
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-deps /tmp/dist/collector-*.whl && rm -rf /tmp/dist

# The journal (every frame read, until it is committed) lives in /app/var/journal: docker
# compose mounts a volume there. Child processes (a feed and a writer per connection) and
# their metrics files (a temporary folder under /tmp) need nothing else writable.
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin collector \
    && mkdir -p /app/var/journal && chown -R collector /app
WORKDIR /app
USER collector

ENV COLLECTOR_METRICS_HOST=0.0.0.0 \
    COLLECTOR_JOURNAL_DIR=/app/var/journal
EXPOSE 9108
# Healthy when the metrics endpoint answers; there is no custom status endpoint.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; b = urllib.request.urlopen('http://127.0.0.1:9108/metrics', timeout=4).read(); sys.exit(0 if b'collector_build_info' in b else 1)"]
ENTRYPOINT ["collector"]
CMD ["run"]
