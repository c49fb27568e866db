# syntax=docker/dockerfile:1
# Two targets from one build:
#   web     the app, served by daphne through `manage.py serve` (docker/entrypoint.sh)
#   static  nginx with the collected static files baked in (docker-compose.yml's nginx)

FROM python:3.11-slim AS web

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app

WORKDIR /app

# Requirements before the code, so a code change reuses the installed layer.
# Each comes from a lock with a hash for every file (`make lock`, for Python 3.11
# on Linux x86_64 like this image); pip and setuptools first, from their own lock.
COPY requirements/ requirements/
RUN pip install --require-hashes -r requirements/build.lock \
 && pip install --require-hashes -r requirements/production.lock
# LDAP sign-in (requirements/ldap.lock, used when LDAP_SERVER_URI is set): python-ldap
# compiles against OpenLDAP, with build.lock's setuptools (no build isolation, so no
# unhashed download). The compiler and headers go away in this same layer;
# the libraries its module links to are kept (marked manual before the autoremove).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libldap2-dev libsasl2-dev \
 && pip install --require-hashes --no-build-isolation -r requirements/ldap.lock \
 && find /usr/local/lib/python3.11/site-packages -name '_ldap*.so' -exec ldd {} + \
    | awk '/=>/ { so = $(NF-1); if (index(so, "/usr/local/") == 1) next; gsub("^/(usr/)?", "", so); print "*" so }' \
    | sort -u | xargs -r dpkg-query --search | cut -d: -f1 | sort -u | xargs -r apt-mark manual \
 && apt-get purge -y --auto-remove gcc libc6-dev libldap2-dev libsasl2-dev \
 && rm -rf /var/lib/apt/lists/*

COPY . .

# Production settings refuse to load without SECRET_KEY; collectstatic signs
# nothing, so a throwaway key for this one command is enough. It is never
# written to ENV, so it is not in the image's configuration.
RUN DJANGO_SETTINGS_MODULE=config.settings.production SECRET_KEY=collectstatic-build-only-not-a-secret \
    python manage.py collectstatic --noinput

# The code stays owned by root: the app user can read it but not change it.
USER app

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=5 \
    CMD ["python", "/app/docker/healthcheck.py"]
CMD ["/bin/sh", "/app/docker/entrypoint.sh"]


FROM nginx:1.27-alpine AS static
COPY --from=web /app/staticfiles /srv/static
