# Shell helpers shared by scripts/setup-runtime and scripts/setup (sourced, not run):
# quiet COMMAND..., apt_get ARGS..., apt_install PACKAGE...
# Expects PYTHON and APT_LOCK_WAIT to be set.

LOG="$(mktemp -t pgusher-setup.XXXXXX)"
trap 'rm -f "$LOG"' EXIT

quiet() {
    # Run a command, showing its output only when it fails.
    if ! "$@" >>"$LOG" 2>&1; then
        echo "setup: command failed: $*" >&2
        cat "$LOG" >&2
        exit 1
    fi
}

apt_locked() {
    # dpkg and apt take fcntl locks on these files; a lock we cannot take is held.
    "$PYTHON" - <<'PYEOF'
import fcntl, os, sys
for path in ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock",
             "/var/lib/apt/lists/lock", "/var/cache/apt/archives/lock"):
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        continue
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        sys.exit(0)
    finally:
        os.close(fd)
sys.exit(1)
PYEOF
}

# apt-get, after any other package manager run has finished.
apt_get() {
    local waited=0
    while apt_locked; do
        if (( waited == 0 )); then
            echo "setup: another package manager holds the dpkg lock; waiting (up to" \
                 "${APT_LOCK_WAIT}s)" >&2
        fi
        if (( waited >= APT_LOCK_WAIT )); then
            echo "setup: the dpkg lock is still held after ${APT_LOCK_WAIT}s" >&2
            exit 1
        fi
        sleep 2
        waited=$((waited + 2))
    done
    # The lock can be taken between the check and apt's start: apt waits for it too.
    quiet apt-get -o "DPkg::Lock::Timeout=$APT_LOCK_WAIT" "$@"
}

# apt_install PACKAGE...: install packages apt may not know yet (refreshing its lists once).
apt_install() {
    if [[ $EUID -ne 0 ]]; then
        echo "setup: missing packages; run as root or install: $*" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    local pkg
    for pkg in "$@"; do
        if ! apt-cache show "$pkg" >/dev/null 2>&1; then
            apt_get update
            break
        fi
    done
    apt_get install -y --no-install-recommends "$@"
}
