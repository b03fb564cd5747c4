# PlantPulse API server image.
#   docker build -t plantpulse .
#   docker compose up        (see docker-compose.yml for the full stack)
# Dashboard assets: the pinned npm packages of src/plantpulse/web (package-lock.json), copied
# into static/vendor as scripts/setup.sh does. Node.js is needed only here, not at run time.
FROM node:20-slim AS web-assets
WORKDIR /web
COPY src/plantpulse/web/package.json src/plantpulse/web/package-lock.json ./
RUN npm ci --no-audit --no-fund && npm run vendor

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Unprivileged user that runs the server.
RUN groupadd --system --gid 10001 plantpulse \
    && useradd --system --uid 10001 --gid plantpulse --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin plantpulse

WORKDIR /app

# All runtime dependencies have binary wheels: no compiler needed in the image.
COPY pyproject.toml README.md ./
COPY src ./src
COPY --from=web-assets /web/static/vendor ./src/plantpulse/web/static/vendor
COPY alembic ./alembic
COPY alembic.ini ./
RUN pip install --no-cache-dir . \
    && rm -rf /app/src

# docker-compose.yml starts through this: it generates a JWT secret on the first start into
# /var/lib/plantpulse (a volume there; Docker copies this directory's owner and mode into a new
# named volume, so the unprivileged user can write it). The image's own CMD below does not:
# run alone, it needs PLANTPULSE_AUTH__JWT_SECRET and refuses the example value.
COPY scripts/docker-start.sh /usr/local/bin/plantpulse-start
RUN chmod 755 /usr/local/bin/plantpulse-start \
    && install -d -o plantpulse -g plantpulse -m 700 /var/lib/plantpulse

USER plantpulse

EXPOSE 8000

# python:3.11-slim has no curl: probe /health with the standard library.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"]

CMD ["plantpulse", "serve", "--host", "0.0.0.0"]
