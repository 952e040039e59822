#!/bin/sh
# Hardening steps for the bakery base image: a non-root user, no setuid helpers it does not need.
set -eu
user="$1"
uid="$2"
useradd --uid "$uid" --user-group --create-home --shell /usr/sbin/nologin "$user"
# Drop the setuid/setgid bit from everything but the few binaries that need it.
find / -xdev -perm /6000 -type f \
  ! -path /usr/bin/passwd ! -path /usr/bin/su -exec chmod a-s {} + 2>/dev/null || true
chmod 0750 /root
