#!/usr/bin/env bash
# Installs the Debian packages from scripts/package.sh into a minimal Debian bookworm root and
# checks them end to end; run as root (CI may). Steps, each timed:
#
#  root     debootstrap --variant=minbase bookworm, with the packages' dependencies and curl
#           (cached: the finished root is kept as a tar under target/install-test/, keyed by
#           suite and package list, so later runs unpack it in seconds and need no network)
#  install  apt-get install ./outpost_*.deb ./outpost-updater_*.deb
#  files    users, groups, files, modes, conffiles, enabled units, `systemd-analyze verify`
#  boot     what boot does for them: systemd-tmpfiles --create
#  update   a release of a synthetic model (`outpost synth-model`) installed by the updater, as
#           outpost-updater, into the store (first install: no runtime needed)
#  serve    outpost serve as user outpost with the packaged config, socket-activated on
#           /run/outpost/outpost.sock the way outpost.socket does it (systemd-socket-activate,
#           the socket chowned to outpost:outpost 0660), answering a chat request from an app
#           user in group outpost; refusing a user outside it
#  trial    a second release applied by the updater: reload, version check and one-token chat
#           on the running runtime as outpost-updater (api.admin_uids from the postinst)
#  purge    dpkg --purge both; nothing of theirs may remain but the users and groups, which
#           Debian keeps
#
# systemd is never booted: the root has its own /run (tmpfs) and a policy-rc.d that forbids
# service starts; postinsts see no running systemd and only enable units.
#
# Usage: sudo scripts/install-test.sh [DIR_WITH_DEBS]  (default target/debian)
# KEEP_ROOT=1 keeps the root for inspection; MIRROR overrides http://deb.debian.org/debian.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
debs=${1:-$repo/target/debian}
cache=$repo/target/install-test
mirror=${MIRROR:-http://deb.debian.org/debian}
suite=bookworm
[ "$(id -u)" = 0 ] || { echo "install-test: run as root" >&2; exit 2; }
runtime_deb=$(ls -t "$debs"/outpost_*_amd64.deb | head -1)
updater_deb=$(ls -t "$debs"/outpost-updater_*_amd64.deb | head -1)
mkdir -p "$cache"

# --- helpers -------------------------------------------------------------------------------
t_all=$EPOCHREALTIME
t_step=$t_all
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%6.1f s", b - a }'; }
step() { # name: prints how long the previous step took, then starts the next
    [ -n "${current:-}" ] && printf '   %-8s %s\n' "$current" "$(seconds "$t_step" "$EPOCHREALTIME")"
    t_step=$EPOCHREALTIME
    current=$1
    [ -n "$1" ] && echo "== $1"
    return 0
}
fail() { echo "FAIL: $*" >&2; exit 1; }
root=$(mktemp -d "$cache/root.XXXXXX")
: >"$cache/updater.log"
daemon=
mounts=()
cleanup() {
    local rc=$?
    if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then kill -TERM "$daemon"; wait "$daemon" || true; fi
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[i]}" || umount -l "${mounts[i]}" || true; done
    if findmnt -rn -o TARGET | grep -q "^$root"; then
        echo "install-test: something is still mounted under $root; not removing it" >&2
    elif [ "${KEEP_ROOT:-0}" = 1 ]; then
        echo "install-test: root kept in $root"
    else
        rm -rf --one-file-system "$root"
    fi
    [ "$rc" = 0 ] && echo "install-test: all good" || echo "install-test: FAILED (exit $rc)" >&2
}
trap cleanup EXIT
in_root() { chroot "$root" "$@"; }
# as USER[:GROUP] CMD...: runs in the root as that user, without capabilities or new privileges.
as() {
    local user=${1%%:*} group=${1#*:}
    [ "$group" = "$1" ] && group=$user
    shift
    in_root /usr/bin/setpriv --reuid="$user" --regid="$group" --init-groups --no-new-privs \
        --bounding-set=-all --inh-caps=-all -- "$@"
}
mount_in() { # type-or-bind source target-in-root [options]
    local kind=$1 src=$2 dst=$root$3
    shift 3
    if [ "$kind" = bind ]; then mount --bind "$src" "$dst"; else mount -t "$kind" "$@" "$src" "$dst"; fi
    mounts+=("$dst")
}
mode_owner() { in_root stat -c '%a %U:%G' "$1" 2>/dev/null || echo missing; } # names from the root's passwd
expect() { # path "mode user:group"
    local got
    got=$(mode_owner "$1")
    [ "$got" = "$2" ] || fail "$1: want $2, got $got"
    echo "   $1: $got"
}

# --- root ----------------------------------------------------------------------------------
step root
# The packages' dependencies (first alternative, without versions), plus curl for the requests.
deps=$(for d in "$runtime_deb" "$updater_deb"; do dpkg-deb -f "$d" Depends; done |
    tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/[[:space:]]//g' | grep -v '^outpost$' | sort -u | paste -sd, -)
deps="$deps,curl"
key=$(echo "$suite $mirror $deps" | sha256sum | cut -c1-12)
tarball=$cache/$suite-minbase-$key.tar.zst
if [ -f "$tarball" ]; then
    echo "   unpacking the cached root $(basename "$tarball")"
    tar -C "$root" --zstd -xpf "$tarball"
else
    echo "   debootstrap $suite (minbase + $deps) from $mirror"
    debootstrap --variant=minbase --include="$deps" "$suite" "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
        { tail -20 "$cache/debootstrap.log"; fail "debootstrap (log: $cache/debootstrap.log)"; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*_Packages
    tar -C "$root" --zstd -cpf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
fi
chmod 755 "$root" # mktemp made it 0700: no user but root could reach /usr
mount_in proc proc /proc
mount_in sysfs sysfs /sys -o ro
mount_in bind /dev /dev
mount_in tmpfs tmpfs /run -o mode=0755,nosuid,nodev
printf '#!/bin/sh\n# install-test: no service starts in this root\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
[ ! -e "$root/run/systemd/system" ] || fail "the root looks like a booted systemd"
# A first boot's tmpfiles.d (systemd's own), so that the boot step below adds only ours.
in_root systemd-tmpfiles --create >/dev/null 2>&1 || true
# Every file before our packages, to compare with after the purge.
snapshot() { (cd "$root" && find . -xdev \( -path ./var/cache -o -path ./var/log -o -path ./var/lib/dpkg \
    -o -path ./var/lib/apt -o -path ./tmp \) -prune -o -print | sort); }
snapshot >"$cache/before.txt"

# --- install -------------------------------------------------------------------------------
step install
cp "$runtime_deb" "$updater_deb" "$root/tmp/"
in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "/tmp/$(basename "$runtime_deb")" "/tmp/$(basename "$updater_deb")" >"$cache/apt.log" 2>&1 ||
    { tail -30 "$cache/apt.log"; fail "apt-get install (log: $cache/apt.log)"; }
in_root dpkg-query -W -f='   ${Package} ${Version} ${Status}\n' outpost outpost-updater

# --- files ---------------------------------------------------------------------------------
step files
for user in outpost outpost-updater; do
    IFS=: read -r _ _ uid gid _ home shell < <(grep "^$user:" "$root/etc/passwd") || fail "no user $user"
    [ "$uid" -lt 1000 ] && [ "$shell" = /usr/sbin/nologin ] || fail "$user: uid $uid, shell $shell"
    echo "   user $user: uid $uid, group $(awk -F: -v g="$gid" '$3 == g { print $1 }' "$root/etc/group"), home $home, $shell"
done
grep -q '^outpost:.*[:,]outpost-updater\(,\|$\)' "$root/etc/group" || fail "outpost-updater is not in group outpost"
expect /usr/bin/outpost "755 root:root"
expect /usr/bin/outpost-updater "755 root:root"
expect /usr/lib/outpost/libonnxruntime.so "644 root:root"
for f in router.onnx router.json tokenizer.json; do expect "/usr/share/outpost/router/$f" "644 root:root"; done
for u in outpost.service outpost.socket outpost-updater.service; do expect "/usr/lib/systemd/system/$u" "644 root:root"; done
expect /etc/outpost/outpost.toml "644 root:root"
expect /etc/outpost/updater.toml "644 root:root"
conffiles=$(in_root dpkg-query -W -f='${Conffiles}\n' outpost outpost-updater | awk 'NF { print $1 }' | paste -sd' ' -)
[ "$conffiles" = "/etc/outpost/outpost.toml /etc/outpost/updater.toml" ] || fail "conffiles: $conffiles"
echo "   conffiles: $conffiles"
updater_uid=$(awk -F: '$1 == "outpost-updater" { print $3 }' "$root/etc/passwd")
grep -q "^admin_uids = \[$updater_uid\]$" "$root/etc/outpost/config.d/20-outpost-updater.toml" ||
    fail "config.d/20-outpost-updater.toml does not trust uid $updater_uid"
echo "   config.d/20-outpost-updater.toml: admin_uids = [$updater_uid]"
for link in multi-user.target.wants/outpost.service sockets.target.wants/outpost.socket \
    multi-user.target.wants/outpost-updater.service; do
    [ -L "$root/etc/systemd/system/$link" ] || fail "not enabled: $link"
done
echo "   enabled: outpost.service, outpost.socket, outpost-updater.service"
out=$(in_root systemd-analyze verify outpost.service outpost.socket outpost-updater.service 2>&1) && [ -z "$out" ] ||
    fail "systemd-analyze verify in the root: $out"
echo "   systemd-analyze verify: clean"
as outpost outpost check-config >/dev/null || fail "outpost check-config as outpost"
echo "   outpost check-config (as outpost, packaged config and drop-in): valid"

# --- boot ----------------------------------------------------------------------------------
step boot
in_root systemd-tmpfiles --create
expect /run/outpost "750 outpost:outpost"
expect /var/lib/outpost "750 outpost:outpost"
expect /var/lib/outpost/models "750 outpost-updater:outpost"

# --- update: the first model, installed by the updater -------------------------------------
step update
# Provisioning, as an image build would do it: a release key and the fleet drop-in.
in_root outpost-updater keygen --out /etc/outpost/keys >/dev/null
mkdir -p "$root/etc/outpost/updater.d"
cat >"$root/etc/outpost/updater.d/50-fleet.toml" <<'EOF'
[updater]
device_class = "install-test"
trusted_keys = ["/etc/outpost/keys/release.pub"]
manifest_url = "http://127.0.0.1:9/manifest.json"
EOF
in_root sh -c 'mkdir -p /tmp/rel && cd /tmp/rel &&
    outpost synth-model --preset tiny --seed 1 --out v1.gguf 2>/dev/null &&
    outpost synth-model --preset tiny --seed 2 --out v2.gguf 2>/dev/null &&
    outpost-updater release --key /etc/outpost/keys/release.key --model v1.gguf --version 1.0.0 \
        --device-class install-test --out r1 >/dev/null &&
    outpost-updater release --key /etc/outpost/keys/release.key --model v2.gguf --version 1.1.0 \
        --device-class install-test --base v1.gguf --out r2 >/dev/null && chmod -R a+rX /tmp/rel'
# As the unit runs it: user outpost-updater, group outpost, umask 0027.
as outpost-updater:outpost sh -c 'umask 0027; exec outpost-updater apply /tmp/rel/r1/manifest.json' \
    >>"$cache/updater.log" 2>&1 || { tail -5 "$cache/updater.log"; fail "outpost-updater apply 1.0.0"; }
echo "   apply 1.0.0 as outpost-updater: $(tail -1 "$cache/updater.log")"
expect /var/lib/outpost/models/versions/1.0.0/model.gguf "640 outpost-updater:outpost"
as outpost test -r /var/lib/outpost/models/current/model.gguf || fail "outpost cannot read the model"
as outpost sh -c '! touch /var/lib/outpost/models/x 2>/dev/null' || fail "outpost can write the store"

# --- serve ---------------------------------------------------------------------------------
step serve
# outpost.socket: systemd binds the socket and passes it as fd 3; the service runs as outpost
# with umask 0077. The activator starts it at the first connection; chroot, the activator,
# setpriv and sh all exec, so $! and LISTEN_PID (the activator's pid) are the daemon's.
chroot "$root" /usr/bin/systemd-socket-activate -l /run/outpost/outpost.sock -E RUST_LOG=info \
    /usr/bin/setpriv --reuid=outpost --regid=outpost --init-groups --no-new-privs --bounding-set=-all \
    --inh-caps=-all -- /bin/sh -c 'umask 0077; exec outpost serve --config /etc/outpost/outpost.toml' \
    >"$cache/serve.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do [ -S "$root/run/outpost/outpost.sock" ] && break; sleep 0.1; done
# SocketUser=, SocketGroup=, SocketMode= of outpost.socket.
in_root chown outpost:outpost /run/outpost/outpost.sock
chmod 0660 "$root/run/outpost/outpost.sock"
in_root useradd --system --no-create-home --groups outpost app
in_root useradd --system --no-create-home stranger
ask() { # user path [body]: prints "HTTP-status body"
    local user=$1 path=$2 body=${3:-}
    as "$user" curl -sS --max-time 60 --unix-socket /run/outpost/outpost.sock -w '\n%{http_code}' \
        ${body:+-H 'Content-Type: application/json' -d "$body"} "http://localhost$path"
}
ready=
for _ in $(seq 300); do
    kill -0 "$daemon" 2>/dev/null || { cat "$cache/serve.log"; fail "outpost serve exited"; }
    [ "$(ask app /readyz 2>/dev/null | tail -1)" = 200 ] && ready=1 && break
    sleep 0.2
done
[ -n "$ready" ] || { tail -20 "$cache/serve.log"; fail "not ready within 60 s"; }
grep -q "using the socket systemd passed" "$cache/serve.log" || fail "the daemon did not use the passed socket"
grep -q "router loaded.*dir=/usr/share/outpost/router" "$cache/serve.log" || fail "the packaged router did not load"
echo "   ready on the passed socket; router and ONNX Runtime from the package"
reply=$(ask app /v1/chat/completions '{"messages":[{"role":"user","content":"Hello?"}],"max_tokens":8}')
[ "$(echo "$reply" | tail -1)" = 200 ] || fail "chat as app: $reply"
echo "$reply" | head -1 | grep -q '"object":"chat.completion"' || fail "not a chat completion: $reply"
echo "   chat as app (group outpost): 200, $(echo "$reply" | head -1 | grep -o '"completion_tokens":[0-9]*')"
if as stranger curl -sS --unix-socket /run/outpost/outpost.sock http://localhost/healthz >/dev/null 2>&1; then
    fail "a user outside group outpost reached the socket"
fi
echo "   a user outside group outpost: refused"
[ "$(ask app /admin/reload '{}' | tail -1)" = 403 ] || fail "/admin/reload as app was not refused"
echo "   /admin/reload as app: 403"
expect /var/lib/outpost/cache.db "600 outpost:outpost"

# --- trial: the second release, tried on the running runtime -------------------------------
step trial
as outpost-updater:outpost sh -c 'umask 0027; exec outpost-updater apply /tmp/rel/r2/manifest.json' \
    >>"$cache/updater.log" 2>&1 || {
    tail -5 "$cache/updater.log"
    tail -20 "$cache/serve.log"
    fail "outpost-updater apply 1.1.0 (trial on the runtime)"
}
grep -q "trial passed; committing.*1.1.0" "$cache/updater.log" || fail "no trial on the runtime"
version=$(ask app /v1/models | head -1 | grep -o '"version":"[^"]*"')
[ "$version" = '"version":"1.1.0"' ] || fail "the runtime serves $version, not 1.1.0"
echo "   apply 1.1.0: reload, version check and one-token chat passed; the runtime serves 1.1.0"
status=$(as outpost-updater:outpost outpost-updater status --json) || fail "outpost-updater status"
echo "$status" | grep -q '"version": "1.1.0"' || fail "outpost-updater status: $status"
echo "   outpost-updater status as outpost-updater: current 1.1.0"
kill -TERM "$daemon"
wait "$daemon" || fail "outpost serve did not exit 0 on SIGTERM: $(tail -5 "$cache/serve.log")"
daemon=

# --- purge ---------------------------------------------------------------------------------
step purge
# What the test itself added goes first: it is not the packages' to remove.
rm -rf "$root/etc/outpost/keys" "$root/etc/outpost/updater.d" "$root/tmp/rel" "$root"/tmp/outpost*.deb
in_root userdel app
in_root userdel stranger
in_root env DEBIAN_FRONTEND=noninteractive dpkg --purge outpost-updater outpost >"$cache/purge.log" 2>&1 ||
    { cat "$cache/purge.log"; fail "dpkg --purge"; }
snapshot >"$cache/after.txt"
# Kept on purge by design: the system users and groups (and the backups of their files).
left=$(comm -13 "$cache/before.txt" "$cache/after.txt" | grep -v -E '^\./etc/(passwd|group|shadow|gshadow)-?$' || true)
gone=$(comm -23 "$cache/before.txt" "$cache/after.txt" || true)
[ -z "$left" ] || fail "left behind after purge:"$'\n'"$left"
[ -z "$gone" ] || fail "removed by the packages although not theirs:"$'\n'"$gone"
[ ! -e "$root/run/outpost" ] || fail "/run/outpost left behind"
grep -q '^outpost:' "$root/etc/passwd" && echo "   left, as Debian policy wants: users outpost and outpost-updater"
echo "   nothing else left; nothing else removed"
step ""
printf '   %-8s %s\n' total "$(seconds "$t_all" "$EPOCHREALTIME")"
