#!/bin/sh
# Container start. Migrations run only where RUN_MIGRATIONS=1 (web1 in
# docker-compose.yml), so two replicas never race on the schema.
set -eu
cd "$(dirname "$0")/.."

if [ "${RUN_MIGRATIONS:-0}" = 1 ]; then
    python manage.py migrate --noinput
    python manage.py ensure_admin
fi

# exec: serve receives docker's SIGTERM itself and ends running replies as
# "interrupted" before it exits. --proxy-headers: the client address and
# scheme come from nginx's X-Forwarded-For / X-Forwarded-Proto; only nginx
# can reach this port.
exec python manage.py serve -b 0.0.0.0 -p "${PORT:-8000}" --proxy-headers
