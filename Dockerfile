# Production image: non-root, uvicorn[standard] (uvloop + httptools), access log off.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

RUN useradd --create-home --uid 10001 vca
COPY --chown=vca:vca . .
USER vca

EXPOSE 8000
# FORWARDED_ALLOW_IPS: the load balancer's address(es); proxy headers from anyone else are ignored.
# PROMETHEUS_MULTIPROC_DIR: each worker writes its metrics there and /metrics sums them (emptied at
# start: figures of an earlier run's processes must not be added in).
ENV WEB_CONCURRENCY=2 FORWARDED_ALLOW_IPS=127.0.0.1 PROMETHEUS_MULTIPROC_DIR=/tmp/vca-metrics
CMD ["sh", "-c", "rm -rf ${PROMETHEUS_MULTIPROC_DIR} && mkdir -p ${PROMETHEUS_MULTIPROC_DIR} && exec uvicorn main:app --host 0.0.0.0 --port 8000 --workers ${WEB_CONCURRENCY} --no-access-log --proxy-headers --forwarded-allow-ips ${FORWARDED_ALLOW_IPS}"]
