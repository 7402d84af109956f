#!/usr/bin/env bash
# Checks packaging/'s systemd units, sysusers.d and tmpfiles.d files without booting systemd
# (never boot it on a build machine: it would take over /tmp and more).
#
#  1. `systemd-analyze verify --root=R` of every unit, R being a temporary root that holds the
#     host's units (for the targets they name), ours at their installed paths, the Jetson drop-in,
#     and the built binaries at /usr/bin (verify checks that ExecStart= is executable).
#  2. `systemd-analyze security --offline=true`: each service's exposure, which must not exceed
#     MAX_EXPOSURE (2.0); the Jetson drop-in's figure is printed for information.
#  3. `systemd-sysusers --root=R` and `systemd-tmpfiles --root=R --create`: the users, groups and
#     directories come out with the owners and modes the units expect.
#
# Binaries: $OUTPOST_BIN_DIR, else $CARGO_TARGET_DIR/release, else target/release (build them
# first: `cargo build --release --bins`, or scripts/package.sh). Needs systemd 252 or later.
set -euo pipefail

MAX_EXPOSURE=${MAX_EXPOSURE:-2.0}
repo=$(cd "$(dirname "$0")/.." && pwd)
pkg=$repo/packaging
bin=${OUTPOST_BIN_DIR:-${CARGO_TARGET_DIR:-$repo/target}/release}
for b in outpost outpost-updater; do
    [ -x "$bin/$b" ] || { echo "check-units: $bin/$b is missing: build it, or set OUTPOST_BIN_DIR" >&2; exit 2; }
done

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
units=$root/usr/lib/systemd/system
mkdir -p "$root/usr/lib/systemd" "$root/usr/bin" "$root/etc/systemd/system/outpost.service.d" \
    "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
cp "$pkg"/systemd/*.service "$pkg"/systemd/*.socket "$units/"
for b in outpost outpost-updater; do
    ln "$bin/$b" "$root/usr/bin/$b" 2>/dev/null || cp "$bin/$b" "$root/usr/bin/$b"
done
cp "$pkg"/sysusers.d/*.conf "$root/usr/lib/sysusers.d/"
cp "$pkg"/tmpfiles.d/*.conf "$root/usr/lib/tmpfiles.d/"
status=0

echo "== systemd-analyze verify"
# verify exits 0 on unknown keys and unparsable values (it only warns): any output fails here.
verify() { # what (for the message), then unit names
    local what=$1 out
    shift
    if out=$(systemd-analyze verify --root="$root" "$@" 2>&1) && [ -z "$out" ]; then
        echo "ok: $what"
    else
        printf '%s\n' "$out" >&2
        echo "verify failed: $what" >&2
        status=1
    fi
}
mapfile -t names < <(cd "$pkg/systemd" && ls -- *.service *.socket)
verify "${names[*]}" "${names[@]}"
# The same with the Jetson drop-in in place.
cp "$pkg/systemd/outpost.service.d/jetson-gpu.conf.example" "$root/etc/systemd/system/outpost.service.d/jetson-gpu.conf"
verify "outpost.service with outpost.service.d/jetson-gpu.conf" outpost.service

echo "== systemd-analyze security (exposure, at most $MAX_EXPOSURE)"
exposure() { # unit -> the score on the summary line
    systemd-analyze security --offline=true --root="$root" "$1" 2>/dev/null |
        sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p'
}
echo "outpost.service with the Jetson drop-in: $(exposure outpost.service) (information only)"
rm "$root/etc/systemd/system/outpost.service.d/jetson-gpu.conf"
for unit in $(cd "$pkg/systemd" && ls -- *.service); do
    score=$(exposure "$unit")
    if [ -z "$score" ]; then
        echo "$unit: no exposure score" >&2
        status=1
    elif awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }'; then
        echo "$unit: $score"
    else
        echo "$unit: $score is over $MAX_EXPOSURE" >&2
        status=1
    fi
done

echo "== sysusers.d and tmpfiles.d (in the temporary root)"
systemd-sysusers --root="$root" 2>&1 | sed 's/^/  /'
systemd-tmpfiles --root="$root" --create
want="outpost:outpost outpost-updater:outpost"  # user:primary group
for pair in $want; do
    user=${pair%%:*}
    line=$(grep "^$user:" "$root/etc/passwd") || { echo "no user $user" >&2; status=1; continue; }
    shell=$(echo "$line" | cut -d: -f7)
    echo "user $user: uid $(echo "$line" | cut -d: -f3), shell $shell"
done
members=$(grep '^outpost:' "$root/etc/group" | cut -d: -f4)
case ",$members," in
    *,outpost-updater,*) echo "group outpost: members $members" ;;
    *) echo "group outpost lacks member outpost-updater (members: $members)" >&2; status=1 ;;
esac
uid_of() { grep "^$1:" "$root/etc/passwd" | cut -d: -f3; }
gid_of() { grep "^$1:" "$root/etc/group" | cut -d: -f3; }
for spec in "run/outpost 750 outpost outpost" "var/lib/outpost 750 outpost outpost" \
    "var/lib/outpost/models 750 outpost-updater outpost"; do
    read -r path mode user group <<<"$spec"
    got=$(stat -c '%a %u %g' "$root/$path" 2>/dev/null || echo missing)
    if [ "$got" = "$mode $(uid_of "$user") $(gid_of "$group")" ]; then
        echo "/$path: $mode $user:$group"
    else
        echo "/$path: want $mode $user:$group, got $got" >&2
        status=1
    fi
done

[ "$status" = 0 ] && echo "check-units: all good" || echo "check-units: FAILED" >&2
exit "$status"
