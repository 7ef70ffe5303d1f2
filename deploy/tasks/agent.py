"""Agent services: the offline speech server, the livekit-agents worker, the token endpoint and
the webhook receiver, from one venv built from the pinned agent/requirements.txt.

Layout on a node with Role.AGENT:
  /opt/voicestack/agent/requirements.lock  the pinned requirements with the sha256 of every wheel
                                           (agent/requirements.lock, uploaded)
  /opt/voicestack/agent/venv               python3 -m venv; pip (--require-hashes --only-binary :all:)
                                           runs only when the lock's sha256 differs from
                                           venv/.requirements.sha256
  /opt/voicestack/agent/app/agent/         agent/*.py and agent/speech/*.py (no tests, no operator tools)
  /opt/voicestack/agent/app/.code.sha256   digest of the uploaded code (a restart input)
  /etc/voicestack/agent.env                every setting and secret, 0600 root (systemd reads it)
  /etc/systemd/system/voicestack-{speech,agent,token,webhooks}.service   User=voicestack, sandboxed
  /etc/systemd/system/voicestack-{recorder,recordings}.service  only with recording != off (removed
                                           when it is switched off; the recordings stay on disk)
  /var/lib/voicestack/recordings/          one directory per recording (recording != off), 0750 voicestack
  /var/lib/voicestack/outbox/              events waiting for forwardUrl (forwardUrl set), 0750 voicestack

A service restarts when its env file, unit, venv stamp or code stamp is newer than its start
(_ops.service_current), so a second converge changes nothing and an interrupted one still
restarts next time. The task ends with every service answering its health endpoint.
"""
from __future__ import annotations

import hashlib
import io
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.facts.files import File, FileContents, FindFiles
from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

from agent import tuning
from deploy.inventory import DeployInputError, NodeVars
from deploy.tasks._lifecycle import lifecycle
from deploy.tasks._ops import install_packages, put_rendered, service_current
from infra.spec import RECORDINGS_PATH, TOKEN_PATH, Role

ROOT = Path(__file__).resolve().parents[2]


def venv_stamp(venv: str) -> str:
    """Holds the sha256 of the requirements the venv was built from (written last)."""
    return f"{venv}/.requirements.sha256"


SOURCE = ROOT / "agent"
#: Generated from agent/requirements.txt by `python -m infra.local.wheelhouse lock` (a unit test
#: checks it is current): every wheel a node installs is one whose hash was reviewed.
REQUIREMENTS_SRC = SOURCE / "requirements.lock"

USER = "voicestack"
HOME = "/var/lib/voicestack"
OPT = "/opt/voicestack/agent"
REQUIREMENTS = f"{OPT}/requirements.lock"
VENV = f"{OPT}/venv"
PYTHON = f"{VENV}/bin/python"
APP = f"{OPT}/app"
VENV_STAMP = venv_stamp(VENV)
CODE_DIR = f"{APP}/agent"
CODE_STAMP = f"{APP}/.code.sha256"
CONF_DIR = "/etc/voicestack"
ENV_FILE = f"{CONF_DIR}/agent.env"
ENV_MODE = "600"         # secrets inside; systemd reads EnvironmentFile= as root
CACHE_NAME = "voicestack-agent"   # CacheDirectory=: /var/cache/voicestack-agent, owned by the service user
CACHE_DIR = f"/var/cache/{CACHE_NAME}"
UNIT_DIR = "/etc/systemd/system"
#: The service user's state: root-owned so a service cannot touch the deploy's record in it
#: (deploy/fastpath.py STATE_FILE); the group may enter it to reach its own directories.
STATE_MODE = "750"
RECORDINGS_DIR = f"{HOME}/recordings"   # RECORDINGS_DIR (agent/recording_config.py)
OUTBOX_DIR = f"{HOME}/outbox"           # OUTBOX_DIR (agent/outbox.py)
DATA_MODE = "750"        # recordings and transcripts are personal data: the service user only
RECORDING_MIN_FREE_MB = 1024   # no recording starts, and a running one ends, below this much free disk
DRAIN_SECONDS = 60       # AGENT_DRAIN_TIMEOUT: running conversations get this long on SIGTERM
STOP_GRACE_SECONDS = 30  # systemd waits drain + this before SIGKILL
READY_SECONDS = 180      # a cold start (imports, model load) on a 2-core node takes ~20 s

#: Modules of agent/ that run on the operator's machine only (they import infra/ or are clients).
OPERATOR_ONLY = frozenset({"admin.py", "token_cli.py", "roundtrip.py", "roundtrip_cli.py", "callclient.py"})
#: The worker has a template of its own (drain on stop); the others share voicestack-service.service.j2.
OWN_TEMPLATE = frozenset({"voicestack-agent", "voicestack-recorder"})

# unit name (without .service) -> (module, description)
SERVICES = {
    "voicestack-speech": ("agent.speech_server", "voicestack offline speech server (STT, TTS, responder)"),
    "voicestack-agent": ("agent.worker", "voicestack voice-agent worker (livekit-agents)"),
    "voicestack-token": ("agent.token_service", "voicestack token endpoint (behind Caddy)"),
    "voicestack-webhooks": ("agent.webhooks", "voicestack LiveKit webhook receiver"),
}
#: Only with recording != off (infra/spec.py EnvSpec.recording).
RECORDING_SERVICES = {
    "voicestack-recorder": ("agent.recorder", "voicestack meeting recorder (hidden livekit-agents participant)"),
    "voicestack-recordings": ("agent.recordings", "voicestack recordings: transcripts, summaries, downloads"),
}
#: The worker-shaped units' drain setting (SIGTERM: stop taking jobs, let running ones end).
DRAIN_VARS = {"voicestack-agent": "AGENT_DRAIN_TIMEOUT", "voicestack-recorder": "RECORDER_DRAIN_TIMEOUT"}
_SAFE_VALUE = re.compile(r"^[^\s\"'\\$`]*$")


def code_files() -> list[Path]:
    """The agent package as deployed: agent/*.py and agent/speech/*.py, sorted (no tests, no caches,
    no operator tools)."""
    return sorted(p for p in SOURCE.glob("*.py") if p.name not in OPERATOR_ONLY) + \
        sorted((SOURCE / "speech").glob("*.py"))


def code_digest(paths: list[Path] | None = None, root: Path = SOURCE) -> str:
    """sha256 over the deployed files' relative names and contents (changes when any file does)."""
    h = hashlib.sha256()
    for p in paths if paths is not None else code_files():
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def requirements_sha256() -> str:
    return hashlib.sha256(REQUIREMENTS_SRC.read_bytes()).hexdigest()


def agent_env(vs: NodeVars) -> dict[str, str]:
    """Every variable of /etc/voicestack/agent.env, in file order (pure: the task and the tests)."""
    spec, cfg, sec = vs.spec, vs.cfg, vs.secrets
    if not sec.token_key:
        raise DeployInputError("the outputs have no token_key; the token endpoint needs it (re-run the provisioner)")
    if not spec.has_port("agent-metrics"):
        raise DeployInputError("the outputs' spec has no agent-metrics port (written before it existed); re-run "
                               "the provisioner (make up, or python -m infra.local up --env <env>), then deploy")
    speech, health, metrics, token, hooks = (spec.port(n) for n in ("speech", "agent-health", "agent-metrics",
                                                                    "token", "webhooks"))
    env = {
        # The worker talks to the LiveKit of its own node; browsers get the public URL from the token service.
        "LIVEKIT_URL": f"ws://127.0.0.1:{spec.port('livekit-http').start}",
        "LIVEKIT_WS_URL": spec.livekit_url,
        "LIVEKIT_API_KEY": sec.api_key,
        "LIVEKIT_API_SECRET": sec.api_secret,
        "TOKEN_KEY": sec.token_key,
        "AGENT_NAME": cfg.agent_name,
        "STT_BASE_URL": cfg.stt_url,
        "LLM_BASE_URL": cfg.llm_url,
        "TTS_BASE_URL": cfg.tts_url,
        "SPEECH_HOST": vs.bind_address(speech.scope),
        "SPEECH_PORT": str(speech.start),
        "AGENT_HEALTH_HOST": vs.bind_address(health.scope),
        "AGENT_HEALTH_PORT": str(health.start),
        # agentWorkers: warm job processes kept ready per node (each holds a VAD, ~100 MB).
        "AGENT_NUM_IDLE_PROCESSES": str(cfg.agent_workers),
        "AGENT_DRAIN_TIMEOUT": str(DRAIN_SECONDS),
        # Per-turn latency histograms (end of turn, transcription, LLM, TTS, e2e) on loopback.
        "AGENT_METRICS_HOST": vs.bind_address(metrics.scope),
        "AGENT_METRICS_PORT": str(metrics.start),
        # Turn taking, Whisper window/beam/threads, TTS streaming: the measured defaults, written
        # out so the node runs them explicitly (reasons and figures in agent/tuning.py).
        **tuning.env(),
        "TOKEN_HOST": vs.bind_address(token.scope),
        "TOKEN_PORT": str(token.start),
        # callPublic: /call/token mints keyless demo tokens (Caddy then asks no password for /call/).
        "TOKEN_PUBLIC": "1" if cfg.call_public else "0",
        # Caddy on this node: the only peer whose X-Forwarded-For (the client's address) is believed.
        "TOKEN_TRUSTED_PROXIES": "127.0.0.1,::1",
        "WEBHOOK_HOST": vs.bind_address(hooks.scope),
        "WEBHOOK_PORT": str(hooks.start),
        # recording: read by the worker (agent-calls), the webhook receiver (dispatches the
        # recorder on room_started), the recorder and the recordings service.
        "RECORDING_POLICY": cfg.recording,
        **_recording_env(vs),
        **_forward_env(vs),
        **_action_env(vs),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": f"{CACHE_DIR}/huggingface",
        "XDG_CACHE_HOME": CACHE_DIR,
        "HOME": CACHE_DIR,
        "PYTHONPATH": APP,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    for key, value in env.items():
        if not _SAFE_VALUE.match(value):
            raise DeployInputError(f"{key} contains whitespace, quotes, '$' or '\\'; systemd's EnvironmentFile "
                                 "would not read it back verbatim")
    return env


def _recording_env(vs: NodeVars) -> dict[str, str]:
    spec = vs.spec
    if not spec.recording:
        return {}
    api, health = spec.port("recordings"), spec.port("recorder-health")
    return {
        "RECORDINGS_DIR": RECORDINGS_DIR,
        "RECORDING_RETENTION_DAYS": str(vs.cfg.recording_retention_days),
        "RECORDING_MIN_FREE_MB": str(RECORDING_MIN_FREE_MB),
        "RECORDINGS_HOST": vs.bind_address(api.scope),
        "RECORDINGS_PORT": str(api.start),
        "RECORDER_HEALTH_HOST": vs.bind_address(health.scope),
        "RECORDER_HEALTH_PORT": str(health.start),
        "RECORDER_DRAIN_TIMEOUT": str(DRAIN_SECONDS),
    }


def _forward_env(vs: NodeVars) -> dict[str, str]:
    """FORWARD_URL and its signing key: LiveKit's events and recording_finished go there."""
    if not vs.cfg.forward_url:
        return {}
    if len(vs.secrets.forward_secret) < 32:
        raise DeployInputError("forwardUrl is set but the forward secret is missing; re-run the provisioner")
    return {"FORWARD_URL": vs.cfg.forward_url, "FORWARD_SECRET": vs.secrets.forward_secret, "OUTBOX_DIR": OUTBOX_DIR}


def _action_env(vs: NodeVars) -> dict[str, str]:
    """ACTION_URL and its signing key: the speech server's responder (offline intents) and the
    worker (a real LLM's set_device tool) post device intents there and speak the answer. One
    signing secret for both directions to n8n (README "n8n": its one Crypto credential checks both)."""
    if not vs.cfg.action_url:
        return {}
    if len(vs.secrets.forward_secret) < 32:
        raise DeployInputError("actionUrl is set but the signing secret is missing; re-run the provisioner")
    return {"ACTION_URL": vs.cfg.action_url, "ACTION_SECRET": vs.secrets.forward_secret}


def services(vs: NodeVars) -> dict[str, tuple[str, str]]:
    """The units this node runs: the four services, plus the recording pair when recording is on."""
    return {**SERVICES, **(RECORDING_SERVICES if vs.spec.recording else {})}


def data_dirs(vs: NodeVars) -> tuple[str, ...]:
    """The directories the services write besides their cache (created 0750 for the service user)."""
    return ((RECORDINGS_DIR,) if vs.spec.recording else ()) + ((OUTBOX_DIR,) if vs.cfg.forward_url else ())


def _writable(vs: NodeVars, name: str) -> tuple[str, ...]:
    """ReadWritePaths of one unit: only what it writes (ProtectSystem=strict makes the rest read-only)."""
    wanted = {
        # agent-calls: the worker records its own calls.
        "voicestack-agent": (RECORDINGS_DIR,) if vs.cfg.recording == "agent-calls" else (),
        "voicestack-webhooks": (OUTBOX_DIR,),
        "voicestack-recorder": (RECORDINGS_DIR,),
        "voicestack-recordings": (RECORDINGS_DIR, OUTBOX_DIR),
    }.get(name, ())
    have = data_dirs(vs)
    return tuple(d for d in wanted if d in have)


def agent_vars(vs: NodeVars) -> dict:
    """Template variables of agent.env and the four units (pure: used by the task and the tests)."""
    spec = vs.spec
    health_urls = {
        "voicestack-speech": f"http://127.0.0.1:{spec.port('speech').start}/health",
        "voicestack-agent": f"http://127.0.0.1:{spec.port('agent-health').start}/",
        "voicestack-token": f"http://127.0.0.1:{spec.port('token').start}{TOKEN_PATH}/health",
        "voicestack-webhooks": f"http://127.0.0.1:{spec.port('webhooks').start}/health",
    }
    env = agent_env(vs)
    binds = {"voicestack-speech": env["SPEECH_HOST"], "voicestack-agent": env["AGENT_HEALTH_HOST"],
             "voicestack-token": env["TOKEN_HOST"], "voicestack-webhooks": env["WEBHOOK_HOST"]}
    if spec.recording:
        health_urls["voicestack-recorder"] = f"http://127.0.0.1:{spec.port('recorder-health').start}/"
        health_urls["voicestack-recordings"] = (f"http://127.0.0.1:{spec.port('recordings').start}"
                                                f"{RECORDINGS_PATH}/health")
        binds["voicestack-recorder"] = env["RECORDER_HEALTH_HOST"]
        binds["voicestack-recordings"] = env["RECORDINGS_HOST"]
    # The recorder joins rooms of its node's LiveKit; the recordings service transcribes through the speech server.
    livekit = ("livekit.service",) if vs.node.has(Role.LIVEKIT) else ()
    after = {"voicestack-recorder": livekit, "voicestack-recordings": ("voicestack-speech.service",)}
    # The worker needs its speech server and (on LiveKit nodes) its LiveKit; the others need nothing.
    worker_after = ("voicestack-speech.service",) + (("livekit.service",) if vs.node.has(Role.LIVEKIT) else ())
    return {
        "env": env,
        "env_name": spec.env,
        "env_file": ENV_FILE,
        "user": USER,
        "python": PYTHON,
        "app": APP,
        "cache_name": CACHE_NAME,
        "drain_seconds": DRAIN_SECONDS,
        "stop_timeout": DRAIN_SECONDS + STOP_GRACE_SECONDS,
        "services": {name: {"module": mod, "description": desc, "health_url": health_urls[name],
                            "writable": _writable(vs, name), "drain_var": DRAIN_VARS.get(name),
                            "lifecycle": lifecycle(f"{name}.service", binds=(binds[name],),
                                                   after=worker_after if name == "voicestack-agent"
                                                   else after.get(name, ()))}
                     for name, (mod, desc) in services(vs).items()},
    }


def unit_template(name: str) -> str:
    """The worker-shaped units (drain on SIGTERM) share the worker's template; the rest the plain one."""
    return f"{'voicestack-agent' if name in OWN_TEMPLATE else 'voicestack-service'}.service.j2"


def unit_vars(v: dict, name: str) -> dict:
    """Template variables of one unit, from agent_vars() (pure: the task and the tests)."""
    service = v["services"][name]
    return {**v, "service": service, "name": name, "lifecycle": service["lifecycle"]}


@operation()
def pip_requirements(venv: str, requirements: str, sha256: str, index_url: str | None = None):
    """
    Build a fresh venv from the hashed requirements and swap it in, unless the venv's stamp says it
    already holds exactly these requirements (their sha256). The stamp is written last.

    pip runs with --require-hashes (a wheel whose sha256 is not in the file is refused) and
    --only-binary :all: (no package builds from source, so no build script runs as root). A new
    venv each time, because pip does not re-check the hashes of packages already installed in an
    existing one. The old venv serves until the new one is complete (`<venv>.new`, then two
    renames); the services restart on the new stamp.

    + venv: e.g. "/opt/voicestack/agent/venv"
    + requirements: the uploaded requirements file on the node, every pin with its --hash
    + sha256: the requirements file's sha256 (the stamp's content)
    + index_url: pip --index-url (local wheelhouse); None: pip's default index
    """
    stamp = venv_stamp(venv)
    have = host.get_fact(FileContents, path=stamp)
    if have and have[0].strip() == sha256 and host.get_fact(File, path=f"{venv}/pyvenv.cfg"):
        return
    q = shlex.quote
    index = f" --index-url {q(index_url)}" if index_url else ""
    if index_url and index_url.startswith("http://"):
        # pip ignores plain-HTTP indexes unless told; only the local wheelhouse is one.
        index += f" --trusted-host {q(urlsplit(index_url).hostname or '')}"
    new, old = q(f"{venv}.new"), q(f"{venv}.old")
    yield (f"rm -rf {new} {old} && python3 -m venv {new} || exit 1; "
           f"{new}/bin/python -m pip install --disable-pip-version-check --no-input --no-cache-dir "
           f"--progress-bar off --require-hashes --only-binary :all:{index} -r {q(requirements)} || exit 1; "
           f"echo {q(sha256)} > {new}/.requirements.sha256 && "
           f"{{ [ ! -e {q(venv)} ] || mv {q(venv)} {old}; }} && mv {new} {q(venv)} && rm -rf {old}")


@operation()
def prune_files(directory: str, keep: tuple[str, ...], pattern: str = "*.py"):
    """
    Remove files matching `pattern` under `directory` that are not in `keep` (left from older code).

    + directory: e.g. "/opt/voicestack/agent/app/agent"
    + keep: absolute paths that stay
    """
    found = host.get_fact(FindFiles, path=directory, fname=pattern) or []
    stale = sorted(set(found) - set(keep))
    if stale:
        yield "rm -f " + " ".join(shlex.quote(p) for p in stale)


@operation()
def remove_unit(unit: str, unit_dir: str = UNIT_DIR):
    """
    Stop, disable and delete a unit of ours that this node no longer runs (its data stays).
    Nothing happens when the unit file is absent.

    + unit: e.g. "voicestack-recorder.service"
    """
    path = f"{unit_dir}/{unit}"
    if not host.get_fact(File, path=path):
        return
    q = shlex.quote
    yield f"systemctl disable --now {q(unit)} || true"
    yield f"rm -f {q(path)}"


def _wait_command(services: dict) -> str:
    """Poll every health URL until it answers or the deadline passes (then print the journals)."""
    q = shlex.quote
    checks = " ".join(f"{name}={q(s['health_url'])}" for name, s in services.items())
    return (
        f"end=$(( $(date +%s) + {READY_SECONDS} )); "
        f"for pair in {checks}; do unit=${{pair%%=*}}; url=${{pair#*=}}; "
        'until curl -fsS -o /dev/null --max-time 5 "$url"; do '
        'if [ "$(date +%s)" -ge "$end" ]; then '
        f'echo "$unit did not answer on $url within {READY_SECONDS}s" >&2; '
        'systemctl status --no-pager -n 0 "$unit" >&2; journalctl -u "$unit" -n 30 --no-pager >&2; exit 1; fi; '
        "sleep 1; done; done"
    )


@deploy("Install and run the agent services")
def agent():
    vs: NodeVars = host.data.vs
    v = agent_vars(vs)

    install_packages(["python3-venv"], block_starts=False, name="Install python3-venv")
    server.group(name=f"Create the {USER} group", group=USER, system=True)
    # ensure_home=False: pyinfra would chown the home to voicestack:voicestack on every run, and the
    # directory step below makes it root:voicestack 0750 (a service must not alter the deploy's state).
    server.user(name=f"Create the {USER} user", user=USER, group=USER, system=True, home=HOME,
                shell="/usr/sbin/nologin", create_home=False, ensure_home=False)

    for path in (OPT, APP, CODE_DIR, f"{CODE_DIR}/speech"):
        files.directory(name=f"Create {path}", path=path, user="root", group="root", mode="755")
    files.put(name=f"Upload {REQUIREMENTS}", src=str(REQUIREMENTS_SRC), dest=REQUIREMENTS, mode="644")
    files.file(name=f"Remove {OPT}/requirements.txt (unhashed, from older deploys)", path=f"{OPT}/requirements.txt",
               present=False)
    pip_requirements(name=f"Install the hash-checked requirements into {VENV}", venv=VENV, requirements=REQUIREMENTS,
                     sha256=requirements_sha256(), index_url=vs.pip_index)

    code = code_files()
    dests = tuple(f"{CODE_DIR}/{p.relative_to(SOURCE).as_posix()}" for p in code)
    for src, dest in zip(code, dests):
        files.put(name=f"Upload {dest}", src=str(src), dest=dest, mode="644")
    prune_files(name=f"Remove stale modules under {CODE_DIR}", directory=CODE_DIR, keep=dests)
    # Written after the code: its change (or an interrupted run) restarts the services.
    files.put(name=f"Record the code digest in {CODE_STAMP}", src=io.StringIO(code_digest(code) + "\n"),
              dest=CODE_STAMP, mode="644")

    files.directory(name=f"Create {HOME}", path=HOME, user="root", group=USER, mode=STATE_MODE)
    for path in data_dirs(vs):
        files.directory(name=f"Create {path}", path=path, user=USER, group=USER, mode=DATA_MODE)

    files.directory(name=f"Create {CONF_DIR}", path=CONF_DIR, user="root", group="root", mode="755")
    put_rendered(name=f"Render {ENV_FILE}", service="agent", template="agent.env.j2", dest=ENV_FILE,
                 user="root", group="root", mode=ENV_MODE, variables=v)
    units = [put_rendered(name=f"Render {UNIT_DIR}/{name}.service", service="agent", template=unit_template(name),
                          dest=f"{UNIT_DIR}/{name}.service", mode="644", variables=unit_vars(v, name))
             for name in v["services"]]
    for name in sorted(set(RECORDING_SERVICES) - set(v["services"])):   # recording switched off (or never on)
        units.append(remove_unit(name=f"Stop, disable and remove {name} (recording is off)", unit=f"{name}.service"))
    systemd.daemon_reload(name="Reload systemd units", _if=any_changed(*units))

    restarts = []
    for name in v["services"]:   # speech before the worker that uses it
        unit = f"{name}.service"
        restarts.append(service_current(
            name=f"Restart {name} if its code, venv, settings or unit changed", service=unit,
            paths=(f"{UNIT_DIR}/{unit}", ENV_FILE, VENV_STAMP, CODE_STAMP)))
        systemd.service(name=f"Enable {name}", service=unit, enabled=True)
    server.shell(name="Wait for the speech server, worker, token and webhook endpoints to answer",
                 commands=[_wait_command(v["services"])], _if=any_changed(*restarts))
