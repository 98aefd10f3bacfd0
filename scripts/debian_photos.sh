# Sourced by scripts/tuning_photos.sh and scripts/training_photos.sh (POSIX sh): sets $here (the
# repository), $py (PYTHON, default the venv's), $tmp (a scratch folder removed on exit) and
# defines `unpack PACKAGE...`: apt-get download the Debian packages and extract them into $tmp/x.
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$here/.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
unpack() {
    (cd "$tmp" && apt-get download "$@" >/dev/null)
    for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/x"; done
}
