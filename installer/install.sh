#!/bin/sh
# Mezzanine agent installer.
#
#   MZ_TOKEN=MZ1.... sh install.sh       install (or upgrade) and enroll this server
#   sh install.sh --token-stdin < FILE   the same, the token read from standard input
#   sh install.sh --uninstall            stop and remove the agent and its identity
#   --token MZ1...  also works, but puts the token where any local user can read it
#                   (/proc/*/cmdline) while the installer runs
#   --binary FILE   use an agent binary already on this machine (SSH adoption uploads it)
#   --reenroll      enroll with the token even if an identity exists
#
# Served by the controller with its URL and the agent binary's SHA-256 filled in; the
# install command checks this script's own SHA-256 before running it. Needs root (or
# MZ_ROOT, a directory to install into instead of /, used by tests).
set -eu

MZ_URL="@MZ_URL@"
AGENT_SHA256="@AGENT_SHA256@"
AGENT_ARCH="@AGENT_ARCH@"

ROOT="${MZ_ROOT:-}"
BIN="$ROOT/usr/local/bin/mezzanine-agent"
STATE_DIR="$ROOT/var/lib/mezzanine-agent"
UNIT="$ROOT/etc/systemd/system/mezzanine-agent.service"
PID_FILE="$STATE_DIR/agent.pid"
LOG_FILE="$STATE_DIR/agent.log"

say() {
    printf 'mezzanine: %s\n' "$*"
}

err() {
    printf 'mezzanine: error: %s\n' "$*" >&2
    exit 1
}

need_cmd() {
    command -v "$1" >/dev/null 2>&1 || err "'$1' is required but not installed"
}

usage() {
    cat <<USAGE
usage: MZ_TOKEN=TOKEN install.sh [--url URL] [--binary FILE] [--reenroll]
       install.sh --token-stdin [--url URL] [--binary FILE] [--reenroll]
       install.sh --uninstall
USAGE
}

download() {
    # download URL FILE
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL --retry 3 -o "$2" "$1"
    elif command -v wget >/dev/null 2>&1; then
        wget -q -O "$2" "$1"
    else
        err "curl or wget is required"
    fi
}

has_systemd() {
    [ -z "$ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

stop_detached() {
    if [ -f "$PID_FILE" ]; then
        pid=$(cat "$PID_FILE")
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            i=0
            while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 50 ]; do
                sleep 0.1
                i=$((i + 1))
            done
        fi
        rm -f "$PID_FILE"
    fi
}

uninstall() {
    if has_systemd && [ -f "$UNIT" ]; then
        systemctl disable --now mezzanine-agent.service >/dev/null 2>&1 || true
        rm -f "$UNIT"
        systemctl daemon-reload || true
    fi
    stop_detached
    rm -f "$BIN"
    rm -rf "$STATE_DIR"
    say "agent removed"
}

write_unit() {
    mkdir -p "$(dirname "$UNIT")"
    cat >"$UNIT" <<UNITFILE
[Unit]
Description=Mezzanine agent
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/usr/local/bin/mezzanine-agent run --state-dir /var/lib/mezzanine-agent
Restart=always
RestartSec=2
# 78: the server was removed from Mezzanine; do not come back.
RestartPreventExitStatus=78

[Install]
WantedBy=multi-user.target
UNITFILE
}

install_agent() {
    token="$1"
    local_binary="$2"
    reenroll="$3"
    need_cmd uname
    need_cmd sha256sum
    arch=$(uname -m)
    [ "$arch" = "$AGENT_ARCH" ] || err "this controller serves a $AGENT_ARCH agent; this machine is $arch"
    [ "$(uname -s)" = "Linux" ] || err "only Linux is supported"

    tmp=$(mktemp)
    trap 'rm -f "$tmp"' EXIT
    if [ -n "$local_binary" ]; then
        cp "$local_binary" "$tmp" || err "cannot read $local_binary"
    else
        say "downloading the agent from $MZ_URL"
        download "$MZ_URL/agent/mezzanine-agent" "$tmp" || err "could not download the agent from $MZ_URL"
    fi
    echo "$AGENT_SHA256  $tmp" | sha256sum -c --quiet - >/dev/null 2>&1 ||
        err "agent binary checksum mismatch; refusing to install it"

    mkdir -p "$(dirname "$BIN")" "$STATE_DIR"
    chmod 700 "$STATE_DIR"
    upgrading=no
    [ -f "$BIN" ] && upgrading=yes
    stop_detached
    install -m 0755 "$tmp" "$BIN.new"
    mv -f "$BIN.new" "$BIN"

    if [ -f "$STATE_DIR/cert.pem" ] && [ "$reenroll" = no ]; then
        say "keeping the existing identity in $STATE_DIR"
    else
        [ -n "$token" ] || err "a join token is required for a first install (MZ_TOKEN or --token-stdin)"
        # In the environment, not the arguments: a process's environment is readable
        # only by its own user, its arguments by everyone.
        MEZZANINE_JOIN_TOKEN="$token" "$BIN" enroll --state-dir "$STATE_DIR" || err "enrollment failed"
    fi

    if has_systemd; then
        write_unit
        systemctl daemon-reload
        systemctl enable mezzanine-agent.service >/dev/null 2>&1
        systemctl restart mezzanine-agent.service
        say "agent running under systemd (mezzanine-agent.service)"
    else
        nohup "$BIN" run --state-dir "$STATE_DIR" >>"$LOG_FILE" 2>&1 </dev/null &
        echo $! >"$PID_FILE"
        say "systemd not found: started the agent detached (pid $(cat "$PID_FILE"), log $LOG_FILE); it will not restart by itself after a reboot"
    fi
    if [ "$upgrading" = yes ]; then
        say "agent upgraded"
    else
        say "agent installed"
    fi
}

main() {
    token="${MZ_TOKEN:-}"
    unset MZ_TOKEN
    binary=""
    reenroll=no
    action=install
    while [ $# -gt 0 ]; do
        case "$1" in
            --token) [ $# -ge 2 ] || err "--token needs a value"; token="$2"; shift 2 ;;
            --token-stdin) IFS= read -r token || [ -n "$token" ] || err "no token on standard input"; shift ;;
            --url) [ $# -ge 2 ] || err "--url needs a value"; MZ_URL="$2"; shift 2 ;;
            --binary) [ $# -ge 2 ] || err "--binary needs a value"; binary="$2"; shift 2 ;;
            --reenroll) reenroll=yes; shift ;;
            --uninstall) action=uninstall; shift ;;
            -h | --help) usage; exit 0 ;;
            *) usage >&2; err "unknown argument: $1" ;;
        esac
    done
    if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
        err "run as root (for example: sudo sh install.sh ...)"
    fi
    case "$action" in
        install) install_agent "$token" "$binary" "$reenroll" ;;
        uninstall) uninstall ;;
    esac
}

main "$@"
