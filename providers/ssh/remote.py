"""Where the agent lives on a remote host, and the shell scripts that start and stop it there.

    layout = AgentLayout(host="s1")                 # /var/lib/cloudmig-agent, /opt/cloudmig/venv
    layout.socket                                   # '/var/lib/cloudmig-agent/agent.sock'
    layout.start_script("auto")                     # sh: systemd unit if systemd runs, else setsid+nohup
    layout.stop_script(purge=True)                  # sh: stop it, remove its files and cgroups

The agent keeps per-container state in memory between calls (running dumps, lazy-pages
daemons, transfer receivers), so it is one long-lived daemon per host on a root-only unix
socket; SSH sessions only relay to it (``cloudmig agent connect --socket ...``). The same
start script is used by SSH adoption and by the cloud-init first boot.
"""

from __future__ import annotations

import dataclasses
import shlex

__all__ = ["AgentLayout", "DEFAULT_ROOT", "DEFAULT_VENV", "START_MODES", "UNIT_NAME"]

DEFAULT_ROOT = "/var/lib/cloudmig-agent"     # token, socket, pid, log and the host dir
DEFAULT_VENV = "/opt/cloudmig/venv"
UNIT_NAME = "cloudmig-agent.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"
START_MODES = ("auto", "systemd", "nohup")
AGENT_START_TIMEOUT_S = 20                  # until the agent's socket exists
AGENT_STOP_TIMEOUT_S = 5                    # SIGTERM grace before SIGKILL


@dataclasses.dataclass(frozen=True)
class AgentLayout:
    host: str
    root: str = DEFAULT_ROOT
    venv: str = DEFAULT_VENV
    cgroup_parent: str = "/cloudmig"
    netns_prefix: str = "cm"

    @property
    def token_file(self) -> str:
        return f"{self.root}/agent.token"

    @property
    def socket(self) -> str:
        return f"{self.root}/agent.sock"

    @property
    def pid_file(self) -> str:
        return f"{self.root}/agent.pid"

    @property
    def log_file(self) -> str:
        return f"{self.root}/agent.log"

    @property
    def cloudmig(self) -> str:
        return f"{self.venv}/bin/cloudmig"

    def serve_argv(self) -> list[str]:
        return [self.cloudmig, "agent", "serve", "--host", self.host, "--host-dir", f"{self.root}/host",
                "--token-file", self.token_file, "--socket", self.socket,
                "--cgroup-parent", self.cgroup_parent, "--netns-prefix", self.netns_prefix]

    def connect_argv(self) -> list[str]:
        return [self.cloudmig, "agent", "connect", "--socket", self.socket]

    def _vars(self) -> str:
        # SSH sessions get a PATH without the sbin directories the agent's tools live in
        return (f"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export PATH\n"
                f"R={shlex.quote(self.root)}; SOCK={shlex.quote(self.socket)}; "
                f"PIDF={shlex.quote(self.pid_file)}; LOG={shlex.quote(self.log_file)}; "
                f"CG={shlex.quote(self.cgroup_parent)}; UNIT={UNIT_PATH}\n")

    def start_script(self, mode: str = "auto") -> str:
        """sh that (re)starts the agent and waits for its socket; prints 'started MODE PID'."""
        serve = " ".join(shlex.quote(a) for a in self.serve_argv())
        return self._vars() + _STOP + f"""
mode={shlex.quote(mode)}
if [ "$mode" = auto ]; then if [ -d /run/systemd/system ]; then mode=systemd; else mode=nohup; fi; fi
umask 077; mkdir -p "$R/host"; chmod 700 "$R"
[ -x {shlex.quote(self.cloudmig)} ] || {{ echo "no cloudmig at {self.cloudmig}" >&2; exit 3; }}
[ -f "$R/agent.token" ] || {{ echo "no agent token at $R/agent.token" >&2; exit 3; }}
stop_agent
if [ "$mode" = systemd ]; then
  printf '[Unit]\\nDescription=cloudmig host agent\\nAfter=network-online.target\\n\\n[Service]\\nExecStart=%s\\nKillMode=process\\nRestart=on-failure\\n\\n[Install]\\nWantedBy=multi-user.target\\n' {shlex.quote(serve)} > "$UNIT"
  systemctl daemon-reload && systemctl enable --now {UNIT_NAME} >/dev/null
  pid=$(systemctl show -p MainPID --value {UNIT_NAME})
else
  cd / && setsid nohup {serve} </dev/null >>"$LOG" 2>&1 &
  pid=$!
fi
echo "$pid" > "$PIDF"
i=0
while [ ! -S "$SOCK" ]; do
  if ! running "$pid"; then echo "the agent exited at start:" >&2; tail -n 5 "$LOG" >&2; exit 4; fi
  i=$((i+1)); [ $i -le {AGENT_START_TIMEOUT_S * 10} ] || {{ echo "the agent made no socket in {AGENT_START_TIMEOUT_S} s" >&2; tail -n 5 "$LOG" >&2; exit 4; }}
  sleep 0.1
done
echo "started $mode $pid"
"""

    def stop_script(self, purge: bool = False) -> str:
        """sh that stops the agent; with ``purge`` also removes its files, mounts and cgroups."""
        script = self._vars() + _STOP + "stop_agent\necho stopped\n"
        if purge:
            script += _PURGE
        return script


# Stop whatever agent serves $SOCK: the systemd unit if it is ours, else the pid on file
# (only if that process still names our socket: pids get reused). An agent that exited is
# stopped even while it waits as a zombie for its parent to reap it: a nohup agent's parent is
# the host's init, which may take seconds to do so (kill -0 would wait that out).
_STOP = f"""
running() {{
  st=$(sed -n 's/^State:[[:space:]]*\\([A-Z]\\).*/\\1/p' /proc/$1/status 2>/dev/null)
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}}
stop_agent() {{
  if [ -f "$UNIT" ] && grep -qF -- "$SOCK" "$UNIT"; then
    systemctl disable --now {UNIT_NAME} >/dev/null 2>&1 || true
    rm -f "$UNIT"; systemctl daemon-reload 2>/dev/null || true
  fi
  if [ -f "$PIDF" ]; then
    pid=$(cat "$PIDF")
    if [ -n "$pid" ] && tr '\\0' ' ' < /proc/$pid/cmdline 2>/dev/null | grep -qF -- "$SOCK"; then
      kill "$pid" 2>/dev/null || true
      i=0; while running "$pid" && [ $i -lt {AGENT_STOP_TIMEOUT_S * 10} ]; do sleep 0.1; i=$((i+1)); done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDF"
  fi
  rm -f "$SOCK"
}}
"""

# Anything the agent left: mounts below its dir (deepest first), its cgroups, its files.
_PURGE = """
awk -v r="$R/" 'index($5, r) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" || true; done
for d in /sys/fs/cgroup"$CG" /sys/fs/cgroup/*"$CG"; do
  [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
done
rm -rf "$R"
echo purged
"""
