#!/bin/sh
# Make sure a Docker engine answers: install docker.io (and debootstrap, for
# building host images without a registry) if missing, and start dockerd when
# the machine has no systemd to do it.
set -eu
if docker info >/dev/null 2>&1; then exit 0; fi
if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
fi
if [ -d /run/systemd/system ]; then
    systemctl start docker
else
    nohup dockerd >/var/log/dockerd.log 2>&1 &
fi
i=0
until docker info >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -le 60 ] || { echo "dockerd did not answer within 60 s; see /var/log/dockerd.log" >&2; exit 1; }
    sleep 1
done
