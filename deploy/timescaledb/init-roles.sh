#!/bin/sh
# First start of the timescaledb container: login users for the collector
# (in collector_writer) and Grafana (in collector_reader). Migration
# 004_roles.sql grants the group roles their privileges; it runs later, as the
# owner, from the `migrate` service.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v collector_password="$COLLECTOR_DB_PASSWORD" -v grafana_password="$GRAFANA_DB_PASSWORD" <<'SQL'
CREATE ROLE collector_writer NOLOGIN;
CREATE ROLE collector_reader NOLOGIN;
CREATE ROLE collector_app LOGIN PASSWORD :'collector_password' IN ROLE collector_writer;
CREATE ROLE grafana_reader LOGIN PASSWORD :'grafana_password' IN ROLE collector_reader;
SQL
