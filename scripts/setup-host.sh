#!/usr/bin/env bash
# Install and start everything bakery's demo and tests need on a fresh Debian 12 machine (root).
# Idempotent: every step checks first. Used by `make demo`, `make test` and .ci/run.
set -euo pipefail
log() { printf '[setup] %s\n' "$*" >&2; }

need_apt=()
command -v dockerd >/dev/null || need_apt+=(docker.io)
command -v docker-registry >/dev/null || need_apt+=(docker-registry)
command -v skopeo >/dev/null || need_apt+=(skopeo)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v packer >/dev/null || need_apt+=(packer)
command -v htpasswd >/dev/null || need_apt+=(apache2-utils)
command -v git >/dev/null || need_apt+=(git)
command -v chromium >/dev/null || need_apt+=(chromium)  # the dashboard's browser test (Playwright drives it)
command -v tinyproxy >/dev/null || need_apt+=(tinyproxy)  # the registry transport's proxy tests (run per test)
command -v openssl >/dev/null || need_apt+=(openssl)  # the TLS registry of the transport tests
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The Docker engine: no systemd here, start dockerd ourselves when it does not answer.
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid
  fi
  # A containerd pid file left by an engine that did not stop cleanly (a session ended, a machine resumed): when its
  # pid now belongs to another process, dockerd waits 60 s for a containerd that never answers, then gives up.
  ctr_pid=/var/run/docker/containerd/containerd.pid
  if [ -f "$ctr_pid" ] && [ "$(cat "/proc/$(cat "$ctr_pid")/comm" 2>/dev/null)" != containerd ]; then
    rm -f "$ctr_pid"
  fi
  mkdir -p /var/log
  nohup dockerd --host unix:///var/run/docker.sock >/var/log/bakery-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { log "dockerd did not start; see /var/log/bakery-dockerd.log"; tail -20 /var/log/bakery-dockerd.log >&2; exit 3; }
fi
log "ready: docker, docker-registry, skopeo, debootstrap, packer, htpasswd, tinyproxy"
