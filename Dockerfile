# lmroute: the router service image (docs: deploy/k8s/README.md).
#   docker build -t lmroute:0.1.0 .          (BuildKit: Docker >= 23; builds the default bundle, ~10 min)
#   docker run --rm -p 50051:50051 lmroute:0.1.0
# Every RUN calls a script in scripts/docker/, the same scripts CI runs (tests/integration/test_deploy.py).

# --- grpc-health-probe, the HEALTHCHECK's and Kubernetes-free probe (Go module proxy, pinned in the script)
FROM golang:1.26.8-bookworm AS health-probe
COPY scripts/docker/install_health_probe.sh /src/scripts/docker/
RUN /src/scripts/docker/install_health_probe.sh /out

# --- build: the full pinned environment (torch included), the default bundle, the lmroute wheel
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY scripts/docker/install_build_deps.sh scripts/docker/
RUN scripts/docker/install_build_deps.sh
COPY . .
RUN scripts/docker/build_bundle.sh --out /artifacts/default \
    && scripts/docker/build_wheel.sh /dist

# --- runtime: ONNX Runtime, NumPy, grpcio... (requirements/runtime.txt), the wheel, the bundle
FROM python:3.11-slim-bookworm AS runtime
ARG LMROUTE_UID=10001
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN --mount=type=bind,source=scripts/docker,target=/src/scripts/docker \
    --mount=type=bind,source=requirements/runtime.txt,target=/src/requirements/runtime.txt \
    --mount=type=bind,from=build,source=/dist,target=/dist \
    /src/scripts/docker/install_runtime_os_deps.sh \
    && /src/scripts/docker/install_runtime.sh /opt/lmroute/venv /dist /src/requirements/runtime.txt \
    && /src/scripts/docker/add_user.sh lmroute "${LMROUTE_UID}"
COPY --from=health-probe /out/grpc-health-probe /usr/local/bin/grpc-health-probe
COPY --from=build /artifacts/default /opt/lmroute/bundle
ENV PATH=/opt/lmroute/venv/bin:$PATH \
    LMROUTE_BUNDLE=/opt/lmroute/bundle \
    LMROUTE_HOST=0.0.0.0 \
    LMROUTE_PORT=50051
USER ${LMROUTE_UID}:${LMROUTE_UID}
WORKDIR /tmp
EXPOSE 50051
# With LMROUTE_TLS_CERT_FILE set the port speaks TLS only, and the probe does too: without verifying the
# certificate, as it asks this container's own port whether it serves, not who it is (docs/SECURITY.md).
# Under mTLS (LMROUTE_TLS_CLIENT_CA_FILE) it presents LMROUTE_HEALTH_TLS_CERT_FILE and
# LMROUTE_HEALTH_TLS_KEY_FILE, a client certificate the client CA signed.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["/bin/sh", "-c", "grpc-health-probe -addr=127.0.0.1:${LMROUTE_PORT} -service=lmroute.v1.RouterService ${LMROUTE_TLS_CERT_FILE:+-tls -tls-no-verify} ${LMROUTE_HEALTH_TLS_CERT_FILE:+-tls-client-cert=$LMROUTE_HEALTH_TLS_CERT_FILE -tls-client-key=$LMROUTE_HEALTH_TLS_KEY_FILE}"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["lmroute-serve"]
