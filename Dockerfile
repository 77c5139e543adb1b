# Callbridge gateway image: Python 3.13 (audioop comes from audioop-lts there), non-root.

# Stage 1: the package as a wheel, built where a C compiler is: the resampler's FIR
# (gateway/audio/_polyphase.c) and the media plane (gateway/_mediaplane.c) are compiled here.
# pip would skip them quietly without a compiler, and the gateway would spend several times the
# CPU per frame on the numpy form, and more on the Python forms of the media plane.
FROM python:3.13-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY gateway ./gateway
COPY callsim ./callsim
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# Stage 2: the image, without the compiler.
FROM python:3.13-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # 20 ms audio frames gain nothing from BLAS threads; keep numpy to one per process.
    OPENBLAS_NUM_THREADS=1 \
    PORT=8080 \
    AGENTS_FILE=/app/agents.yaml \
    LOG_FORMAT=json \
    # Call records (README, "Call records"): SQLite in the writable /data volume by default;
    # set DATABASE_URL=postgresql://… when several replicas share them.
    DATABASE_URL=sqlite:////data/calls.db

WORKDIR /app

# Install the package first (cached while only agents.yaml changes), and refuse an image whose
# resampler or media plane was not compiled.
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels \
    && python -c "from gateway import mediaplane; from gateway.audio import resample; assert resample.COMPILED, 'resampler not compiled'; assert mediaplane.COMPILED, 'media plane not compiled'" \
    && gateway --help > /dev/null

COPY agents.yaml ./agents.yaml
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin gateway \
    && mkdir -p /data && chown gateway:gateway /data
USER gateway
# The one place the gateway writes: the SQLite call records, and recordings if RECORDINGS_DIR
# points here (e.g. /data/recordings). The app directory stays read-only to the gateway user.
VOLUME ["/data"]

EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8080') + '/healthz', timeout=2)"]

# Validate agents.yaml at start (one clear error and exit 2 if it is wrong), then serve: one
# worker per core of the container's CPU limit (WORKERS or --workers to choose; README "Scaling").
CMD ["gateway", "serve", "--host", "0.0.0.0"]
