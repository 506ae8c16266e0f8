# Switchboard: one image for every process kind; compose picks the kind with the command
# (`api`, `scheduler`, `worker`, `simulator`, `migrate`).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the distribution is built from, so the local .venv, .git and data dirs stay out.
COPY pyproject.toml README.md ./
COPY db ./db
COPY dispatcher ./dispatcher
COPY web ./web
RUN python -m venv /opt/venv && /opt/venv/bin/pip install .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SWITCHBOARD_DATA_DIR=/home/switchboard/data
COPY --from=build /opt/venv /opt/venv
# A fixed non-root uid, so volume ownership is predictable across rebuilds.
RUN useradd --create-home --uid 10001 --user-group switchboard
USER switchboard
WORKDIR /home/switchboard
EXPOSE 8000 8001
ENTRYPOINT ["switchboard"]
CMD ["api"]
