#!/bin/bash
# Turns a plain Debian rootfs (debootstrap minbase or the official image) into
# a "bare Debian server" test host.  Runs inside a throw-away container started
# by `python -m fleet build`; the result is committed as asgi-fleet-host:<dist>.
#
# Deliberately installs nothing app-related (no python3, curl, ...): the deploy
# must prove that it installs what it needs with apt.
# Usage: image-setup.sh DIST DEPLOY_USER   (controller CA bundle at /tmp/controller-ca.crt)
set -euo pipefail
dist=$1 user=$2
export DEBIAN_FRONTEND=noninteractive

# --- apt: the release, its -updates and its security suite, over plain HTTP.
rm -f /etc/apt/sources.list.d/debian.sources
cat >/etc/apt/sources.list <<SOURCES
deb http://deb.debian.org/debian $dist main
deb http://deb.debian.org/debian $dist-updates main
deb http://deb.debian.org/debian-security $dist-security main
SOURCES
# The official image strips docs and man pages; keep a server's normal behaviour.
rm -f /etc/dpkg/dpkg.cfg.d/excludes
apt-get update -q
apt-get install -y -q --no-install-recommends \
    systemd systemd-sysv dbus openssh-server sudo ca-certificates
apt-get upgrade -y -q

# --- Trust the controller's CA bundle (it holds the TLS proxy CA that pip needs).
install -m 0644 /tmp/controller-ca.crt /usr/local/share/ca-certificates/asgi-fleet-controller.crt
update-ca-certificates

# --- The deploy user: key-only SSH login, passwordless sudo.
id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash --groups sudo "$user"
usermod --password '*' "$user"   # no password, but not "locked" (! would block sshd without PAM)
install -d -m 0700 -o "$user" -g "$user" "/home/$user/.ssh"
echo "$user ALL=(ALL) NOPASSWD:ALL" >"/etc/sudoers.d/$user"
chmod 0440 "/etc/sudoers.d/$user"
visudo -cf "/etc/sudoers.d/$user"

# --- sshd: public keys only.  Host keys are made per container at first boot,
# so containers from one image do not share them.
cat >/etc/ssh/sshd_config.d/asgi-fleet.conf <<'SSHD'
PubkeyAuthentication yes
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
SSHD
rm -f /etc/ssh/ssh_host_*
cat >/etc/systemd/system/asgi-fleet-ssh-keygen.service <<'UNIT'
[Unit]
Description=Generate SSH host keys of this test host
Before=ssh.service ssh.socket
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
RequiredBy=ssh.service
UNIT
systemctl enable asgi-fleet-ssh-keygen.service ssh.service

# --- systemd in a container: mask what needs real hardware, ttys or kernel
# knobs, and the apt timers (they would grab the dpkg lock in the middle of a
# deploy).  Goal: `systemctl is-system-running` = running, quickly.
systemctl mask \
    getty@.service serial-getty@.service console-getty.service getty.target \
    systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
    systemd-udev-trigger.service systemd-udev-settle.service \
    systemd-modules-load.service systemd-remount-fs.service systemd-firstboot.service \
    systemd-sysctl.service systemd-random-seed.service \
    sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
    sys-fs-fuse-connections.mount dev-hugepages.mount dev-mqueue.mount \
    apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer
# trixie mounts a tmpfs on /tmp; without CAP_SYS_ADMIN that fails ("permission
# denied") and leaves the system degraded.  /tmp stays on the container's disk.
systemctl mask tmp.mount

# --- Each container gets its own machine id at boot.
: >/etc/machine-id
rm -f /var/lib/dbus/machine-id

apt-get clean
rm -rf /var/lib/apt/lists/* /tmp/controller-ca.crt "$0"
