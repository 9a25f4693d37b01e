# Carina: one image for the six services. `docker run carina envmgr` runs `python -m services.envmgr`.
# Only the runtime dependencies from pyproject.toml are installed: no dev/test/lint extras, so neither the
# GPL MongoDB-wire server (secantusdb, dev-only) nor test tools end up in the image. Health is checked by
# Kubernetes probes (/healthz, /readyz on CARINA_<SERVICE>_PROBE_PORT), so there is no HEALTHCHECK.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: a wheel of the package and its runtime dependencies in a virtualenv -------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/carina
# README.md is the package's readme (pyproject.toml); the glob tolerates a checkout without it.
COPY pyproject.toml README.m[d] ./
RUN test -f README.md || printf '# Carina\n' > README.md
COPY libs ./libs
COPY services ./services
# A plain (non-editable) install of the package itself, without extras.
RUN /opt/carina/bin/pip install --upgrade pip \
 && /opt/carina/bin/pip install . \
 && /opt/carina/bin/pip check \
 && ! /opt/carina/bin/pip show secantusdb >/dev/null 2>&1

# --- runtime: the virtualenv and nothing else, as an unprivileged user ---------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="carina" \
      org.opencontainers.image.description="Carina environment manager for OpenNebula (envmgr, scheduler, provisioner, policy, gateway, callback)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/carina/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 carina \
 && useradd --system --uid 10001 --gid carina --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin carina
COPY --from=build /opt/carina /opt/carina
COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/carina-entrypoint
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/carina-entrypoint"]
CMD ["--help"]
