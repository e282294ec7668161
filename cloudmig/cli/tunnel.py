"""`cloudmig tunnel up|status|down`: WireGuard tunnels between hosts."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from cloudmig.cli._app import app, console, print_json
from cloudmig.control import tunnels

tunnel_app = typer.Typer(help="WireGuard tunnels between hosts.", no_args_is_help=True)
app.add_typer(tunnel_app, name="tunnel")


@tunnel_app.command("up")
def up(a: str = typer.Argument(..., help="One host."), b: str = typer.Argument(..., help="The other host.")) -> None:
    """Bring a tunnel up between hosts A and B (keys made on each host) and complete a handshake."""
    rec = tunnels.up(a, b)
    console.print(f"tunnel {a} ({rec.iface_a}, udp {rec.port_a}) <-> {b} ({rec.iface_b}, udp {rec.port_b}) up")


@tunnel_app.command("status")
def status(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Tunnels: latest handshake, keepalive, bytes each way, endpoint."""
    rows = tunnels.status()
    if json_out:
        print_json(rows)
        return
    table = Table("TUNNEL", "HOST", "INTERFACE", "ENDPOINT", "HANDSHAKE", "KEEPALIVE", "RX", "TX", box=None)
    now = time.time()
    for t in rows:
        for s in t["sides"]:
            hs = s.get("latest_handshake")
            hs_text = f"{now - hs:.0f}s ago" if hs else ("never" if s["state"] == "up" else s["state"])
            keepalive = f"{s['keepalive_s']}s" if s.get("keepalive_s") else "off" if s["state"] == "up" else "-"
            table.add_row(f"{t['a']}-{t['b']}", s["host"], s["interface"], s.get("endpoint") or "-",
                          hs_text, keepalive, str(s.get("rx_bytes", "-")), str(s.get("tx_bytes", "-")))
    console.print(table)


@tunnel_app.command("down")
def down(a: str = typer.Argument(...), b: str = typer.Argument(...)) -> None:
    """Take the tunnel between A and B down: interfaces, keys and processes removed."""
    tunnels.down(a, b)
    console.print(f"tunnel {a}-{b} down")
