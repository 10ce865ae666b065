# The temporal-handoff image: `handoff worker` by default (also `handoff setup`,
# `handoff codec-server`, ...). Runtime dependencies only, non-root, no secrets:
# ANTHROPIC_API_KEY, TEMPORAL_API_KEY and HANDOFF_CODEC_KEYS come from the
# environment at run time.
#
#   docker build -t temporal-handoff .
#   docker run --rm -e TEMPORAL_ADDRESS=host:7233 -e ANTHROPIC_API_KEY temporal-handoff

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: install the package and its runtime dependencies into a venv
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/handoff
COPY pyproject.toml README.md ./
COPY temporal_handoff ./temporal_handoff
# `.` and not `.[dev]`: no test, lint or browser tooling in the image.
RUN /opt/handoff/bin/pip install --upgrade pip \
 && /opt/handoff/bin/pip install . \
 && /opt/handoff/bin/handoff --help >/dev/null

# ---- runtime
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/handoff/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HANDOFF_TASK_QUEUE=agent-sessions \
    HANDOFF_STORAGE_DIR=/data/handoff-store \
    HANDOFF_HEALTH_FILE=/tmp/handoff-worker.alive
RUN groupadd --system --gid 10001 handoff \
 && useradd --system --uid 10001 --gid handoff --create-home --home-dir /home/handoff handoff \
 && mkdir -p /data/handoff-store \
 && chown handoff:handoff /data/handoff-store
COPY --from=build /opt/handoff /opt/handoff
USER handoff:handoff
WORKDIR /home/handoff
# The worker touches HANDOFF_HEALTH_FILE every 5 s while it polls and removes it when
# it starts draining.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, sys, time; p = os.environ.get('HANDOFF_HEALTH_FILE', '/tmp/handoff-worker.alive'); sys.exit(0 if os.path.exists(p) and time.time() - os.path.getmtime(p) < 30 else 1)"]
# SIGTERM drains the worker (in-flight activities finish or are handed back).
STOPSIGNAL SIGTERM
ENTRYPOINT ["handoff"]
CMD ["worker"]
