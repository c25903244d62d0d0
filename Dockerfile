# syntax=docker/dockerfile:1
# tracewatch worker image: `docker build -t tracewatch .`, then
#   docker run --rm tracewatch --help
#   docker run --rm -e TRACEWATCH_KAFKA=... -e TRACEWATCH_REDIS_URL=... \
#     -e TRACEWATCH_PSN_KEY=... -p 6066:6066 tracewatch worker

# --- build: wheels of tracewatch and every dependency (compilers stay in this stage) ------
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# A compiler, for the rare dependency that has no wheel for this platform (e.g. on arm64).
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .
RUN pip wheel --wheel-dir /wheels .

# --- runtime -------------------------------------------------------------------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# jemalloc, which the worker preloads when it finds it (TRACEWATCH_ALLOCATOR, README "Settings").
RUN apt-get update \
    && apt-get install -y --no-install-recommends libjemalloc2 \
    && rm -rf /var/lib/apt/lists/*

# `pip install .`, from the wheels built above: no Python package is fetched in this stage.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels tracewatch

# Not root. The working directory is the worker's writable data directory.
RUN useradd --create-home --uid 10001 --user-group tracewatch \
    && mkdir -p /var/lib/tracewatch \
    && chown tracewatch:tracewatch /var/lib/tracewatch
USER tracewatch
WORKDIR /var/lib/tracewatch

# web page and /metrics of `tracewatch worker`
EXPOSE 6066

ENTRYPOINT ["tracewatch"]
CMD ["worker"]
