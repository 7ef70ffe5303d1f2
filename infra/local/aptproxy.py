"""Debian packages for the machines: the host's own mirror, through apt-cacher-ng on the host.

The mirror is read from the host's apt configuration (never written in code). The machines
keep the same `sources` as the host and reach them through `Acquire::http::Proxy`; they have
no route to the mirror themselves.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from infra.local import host
from infra.local.names import APT_PROXY_PORT, CACHE, EnvNames

SUITE = "bookworm"


@dataclass(frozen=True)
class Mirrors:
    debian: str      # e.g. http://<mirror>/debian
    security: str    # e.g. http://<mirror>/debian-security ("" when the host has none)


def _entries(root: Path = Path("/etc/apt")) -> list[tuple[str, list[str]]]:
    """(uri, suites) of every enabled `deb` source of the host, one-line and deb822 forms."""
    found: list[tuple[str, list[str]]] = []
    files = [root / "sources.list"] + sorted((root / "sources.list.d").glob("*"))
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    k, _, v = line.partition(":")
                    fields[k.strip().lower()] = v.strip()
                if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                    for uri in fields.get("uris", "").split():
                        found.append((uri, fields.get("suites", "").split()))
        elif f.suffix == ".list":
            for line in text.splitlines():
                parts = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(parts) >= 3 and parts[0] == "deb":
                    found.append((parts[1], [parts[2]]))
    return found


def host_mirrors(root: Path = Path("/etc/apt")) -> Mirrors:
    """The host's own http:// Debian and security mirrors (from its apt sources under `root`)."""
    debian = security = ""
    for uri, suites in _entries(root):
        uri = uri.rstrip("/")
        if not uri.startswith("http://"):
            continue  # https sources cannot go through an HTTP caching proxy
        if any(s == f"{SUITE}-security" for s in suites) and not security:
            security = uri
        elif SUITE in suites and not debian:
            debian = uri
    if not debian:
        raise host.LocalEnvError(f"the host's apt sources (/etc/apt/sources.list*) have no http:// '{SUITE}' "
                                 "Debian mirror; add one, the machines use the host's mirror through a proxy")
    return Mirrors(debian, security)


def machine_sources(m: Mirrors) -> str:
    """deb822 sources of a fresh Debian 12 cloud image, on the host's mirror."""
    out = (f"Types: deb\nURIs: {m.debian}\nSuites: {SUITE} {SUITE}-updates\nComponents: main\n"
           "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    if m.security:
        out += (f"\nTypes: deb\nURIs: {m.security}\nSuites: {SUITE}-security\nComponents: main\n"
                "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    return out


def proxy_url(names: EnvNames) -> str:
    return f"http://{names.gateway}:{APT_PROXY_PORT}"


def apt_proxy_conf(names: EnvNames) -> str:
    return f'Acquire::http::Proxy "{proxy_url(names)}";\n'


def start(names: EnvNames, mirrors: Mirrors) -> str:
    """apt-cacher-ng for this env on its gateway address (idempotent). Returns the proxy URL."""
    conf = names.run_dir / "acng"
    if host.running("apt-cacher-ng", names.run_dir) and host.port_open_tcp(names.gateway, APT_PROXY_PORT):
        return proxy_url(names)
    conf.mkdir(parents=True, exist_ok=True)
    for f in Path("/etc/apt-cacher-ng").iterdir():
        if f.is_file():
            shutil.copy(f, conf / f.name)
    # Requests for the host's mirror are served (and cached) from the host's mirror itself.
    (conf / "backends_debian").write_text(with_trailing_slash(mirrors.debian))
    if mirrors.security:
        (conf / "backends_debvol").write_text(with_trailing_slash(mirrors.security))
    cache = CACHE / "apt-cacher-ng" / names.env
    logs = names.run_dir / "acng-log"
    cache.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [host.which("apt-cacher-ng") or "apt-cacher-ng", "-c", str(conf), "ForeGround=1",
           f"BindAddress={names.gateway}", f"Port={APT_PROXY_PORT}", f"CacheDir={cache}", f"LogDir={logs}",
           f"PidFile={names.run_dir}/acng-own.pid", f"SocketPath={names.run_dir}/acng.socket",
           "ExThreshold=4", "ReportPage=acng-report.html"]
    host.start_daemon("apt-cacher-ng", cmd, names.run_dir, names.run_dir / "apt-cacher-ng.log")
    host.wait_until(f"apt-cacher-ng on {names.gateway}:{APT_PROXY_PORT} (log: {names.run_dir}/apt-cacher-ng.log)",
                    lambda: host.port_open_tcp(names.gateway, APT_PROXY_PORT), 20)
    return proxy_url(names)


def with_trailing_slash(uri: str) -> str:
    return uri.rstrip("/") + "/\n"
