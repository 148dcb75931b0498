"""The container image and the Kubernetes example, checked without a Docker engine or a cluster.

- Dockerfile: every RUN step calls a script in scripts/docker/ (the same scripts run here); hadolint
  (pinned, from PyPI) passes on it and fails on a bad one; requirements/runtime.txt = the closure of the
  package's dependencies at the versions of requirements/lock.txt.
- The runtime stage for real: scripts/docker/build_wheel.sh builds the wheel (compiled core included),
  scripts/docker/install_runtime.sh installs it with requirements/runtime.txt into a fresh venv (no
  torch), and `lmroute-serve` from that venv serves a small real bundle on 127.0.0.1; grpc-health-probe
  (built by scripts/docker/install_health_probe.sh, as in the image's HEALTHCHECK) sees SERVING and a
  Route call answers with the bundle's own math.
- The build stage's bundle step: scripts/docker/build_bundle.sh --quick (routers random, mf, sw_ranking;
  cache kept in pytest's cache dir), and the runtime venv loads and scores what it wrote.
- deploy/k8s: deploy/k8s/validate.sh (go test: strict decoding into k8s.io/api types + the sidecar rules,
  broken copies must fail).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from lmroute.bundle.loader import load_bundle
from lmroute.bundle.testing import make_fake_classifier, make_tiny_bundle
from lmroute.service.client import RouterClient
from lmroute.service.testing import ServerThread

REPO = Path(__file__).resolve().parents[2]
DOCKER_SCRIPTS = REPO / "scripts" / "docker"
SERVICE = "lmroute.v1.RouterService"
PROMPT = "Prove that the square root of 2 is irrational."
pytestmark = pytest.mark.slow


def _cache_dir(request: pytest.FixtureRequest, name: str) -> Path:
    """A directory kept between sessions in pytest's cache dir; a fresh temporary one when the cache
    plugin is off (`-p no:cacheprovider`)."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir(name))
    return request.getfixturevalue("tmp_path_factory").mktemp(name)


def _run(cmd: list[str | Path], *, timeout: float, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command, capturing output; on failure the message shows the command and its output."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        pytest.fail(
            f"{shlex.join(str(c) for c in cmd)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


# ---------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; comments and blank lines dropped."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for no, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # a comment line inside a continued instruction
        if not buf:
            start = no
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        keyword, _, args = " ".join(p for p in buf if p).partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip()))
        buf = []
    assert not buf, "the Dockerfile ends inside a continued instruction"
    return out


def _stages(instructions: list[Instruction]) -> dict[str, list[Instruction]]:
    stages: dict[str, list[Instruction]] = {}
    current: list[Instruction] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", ins.args, flags=re.IGNORECASE)
            assert m, f"line {ins.line}: every stage is named (FROM image AS name): {ins.args!r}"
            current = stages.setdefault(m.group(2), [ins])
        else:
            current.append(ins)
    return stages


def _run_commands(args: str) -> list[list[str]]:
    """The commands of a RUN (shell form), --mount/--network options dropped, split on `&&`."""
    words = shlex.split(args)
    while words and words[0].startswith("--"):
        words.pop(0)
    commands: list[list[str]] = [[]]
    for w in words:
        if w == "&&":
            commands.append([])
        else:
            commands[-1].append(w)
    return commands


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile((REPO / "Dockerfile").read_text())


def test_every_run_step_calls_a_project_script(dockerfile: list[Instruction]) -> None:
    called = []
    runs = [i for i in dockerfile if i.keyword == "RUN"]
    assert runs, "no RUN step in the Dockerfile"
    for ins in runs:
        assert not ins.args.startswith("["), f"line {ins.line}: RUN in exec form; use a script call"
        for cmd in _run_commands(ins.args):
            assert cmd, f"line {ins.line}: empty command in {ins.args!r}"
            m = re.fullmatch(r"(?:/src/)?scripts/docker/([\w.-]+\.sh)", cmd[0])
            assert m, f"line {ins.line}: RUN must call a script in scripts/docker/, not {cmd[0]!r}"
            script = DOCKER_SCRIPTS / m.group(1)
            assert script.is_file() and os.access(script, os.X_OK), (
                f"line {ins.line}: {script} missing or not executable"
            )
            called.append(m.group(1))
    assert set(called) >= {
        "install_health_probe.sh",
        "install_build_deps.sh",
        "build_bundle.sh",
        "build_wheel.sh",
        "install_runtime_os_deps.sh",
        "install_runtime.sh",
        "add_user.sh",
    }, called


def test_stages_and_runtime_settings(dockerfile: list[Instruction]) -> None:
    stages = _stages(dockerfile)
    assert list(stages) == ["health-probe", "build", "runtime"]
    for name, ins in stages.items():
        image = ins[0].args.split()[0]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), (
            f"stage {name}: base image {image!r} is not pinned by tag"
        )
    assert stages["build"][0].args.split()[0] == stages["runtime"][0].args.split()[0] == "python:3.11-slim-bookworm"
    runtime = stages["runtime"]
    text = {
        k: [i.args for i in runtime if i.keyword == k]
        for k in ("ENV", "USER", "ENTRYPOINT", "HEALTHCHECK", "COPY", "ARG")
    }
    uid = int(re.fullmatch(r"LMROUTE_UID=(\d+)", text["ARG"][0]).group(1))  # type: ignore[union-attr]
    assert uid >= 1000 and text["USER"] == ["${LMROUTE_UID}:${LMROUTE_UID}"]
    assert text["ENTRYPOINT"] == ['["lmroute-serve"]']
    env = " ".join(text["ENV"])
    assert "LMROUTE_HOST=0.0.0.0" in env and "LMROUTE_PORT=50051" in env and "LMROUTE_BUNDLE=/opt/lmroute/bundle" in env
    assert len(text["HEALTHCHECK"]) == 1 and "grpc-health-probe" in text["HEALTHCHECK"][0]
    assert f"-service={SERVICE}" in text["HEALTHCHECK"][0]
    # the runtime stage takes nothing from the build context but its scripts (bind-mounted) and the
    # stages' outputs: no torch environment, no sources
    assert all(c.startswith("--from=") for c in text["COPY"]), text["COPY"]
    # the Kubernetes example runs as the image's user
    deployment = yaml.safe_load((REPO / "deploy" / "k8s" / "deployment.yaml").read_text())
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".cache", "artifacts", "build", "dist", "**/*.so"} <= ignored


@pytest.fixture(scope="module")
def hadolint_ready() -> None:
    """Install the pinned hadolint (first run) by linting the Dockerfile once."""
    _run([DOCKER_SCRIPTS / "lint_dockerfile.sh", REPO / "Dockerfile"], timeout=300, check=False)


def test_hadolint_passes_on_the_dockerfile(hadolint_ready: None) -> None:
    proc = _run([DOCKER_SCRIPTS / "lint_dockerfile.sh"], timeout=120, check=False)
    assert proc.returncode == 0, f"hadolint findings:\n{proc.stdout}{proc.stderr}"
    version = _run([DOCKER_SCRIPTS / "lint_dockerfile.sh", "--version"], timeout=30).stdout
    assert version.strip() == "Haskell Dockerfile Linter 2.15.1"


def test_hadolint_fails_on_a_bad_dockerfile(hadolint_ready: None, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /src && pip install lmroute\nCMD lmroute-serve\n")
    proc = _run([DOCKER_SCRIPTS / "lint_dockerfile.sh", bad], timeout=120, check=False)
    assert proc.returncode != 0
    for rule in ("DL3007", "DL3003", "DL3013", "DL3042", "DL3025"):  # latest tag, cd, pip pins, cache, CMD
        assert rule in proc.stdout, f"{rule} not reported:\n{proc.stdout}"


# ---------------------------------------------------------------- requirements/runtime.txt


def _pins(path: Path) -> dict[str, tuple[str, str]]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"{path.name}: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = (name, version)
    return pins


def _dependency_closure() -> set[str]:
    """Canonical names of pyproject.toml's [project] dependencies, its `postgres` extra (the image serves
    a PostgreSQL store too: the Kubernetes replicas share one) and theirs, each with the extras it is
    asked with, from the metadata installed in this environment."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = [*project["dependencies"], *project["optional-dependencies"]["postgres"]]
    seen: set[tuple[str, str]] = set()  # (name, extra)
    todo = [(Requirement(d), "") for d in deps]  # (requirement, the extra of its parent it came with)
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        for wanted in ("", *sorted(req.extras)):
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            todo += [(Requirement(r), wanted) for r in metadata.distribution(req.name).requires or []]
    return {name for name, _ in seen}


def test_runtime_pins_are_the_lock_versions_and_complete() -> None:
    runtime = _pins(REPO / "requirements" / "runtime.txt")
    lock = _pins(REPO / "requirements" / "lock.txt")
    differ = {n: (v, lock.get(n, ("", "missing"))[1]) for n, (_, v) in runtime.items() if lock.get(n, ("", ""))[1] != v}
    assert not differ, f"runtime.txt vs lock.txt (runtime, lock): {differ}"
    closure = _dependency_closure()
    assert closure - set(runtime) == set(), f"runtime.txt misses {sorted(closure - set(runtime))}"
    assert set(runtime) - closure == set(), (
        f"runtime.txt has more than the server needs: {sorted(set(runtime) - closure)}"
    )
    assert "torch" not in runtime and "onnxruntime" in runtime and "faiss-cpu" not in runtime


# ---------------------------------------------------------------- the runtime stage, for real


@pytest.fixture(scope="module")
def health_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("health_probe")
    _run([DOCKER_SCRIPTS / "install_health_probe.sh", out], timeout=900)
    return out / "grpc-health-probe"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """The wheel, as the image's build stage makes it; CMake's build of the compiled core is kept in
    pytest's cache dir between sessions (only changed sources recompile; the core's source fingerprint
    check refuses a stale module)."""
    out = tmp_path_factory.mktemp("dist")
    work = _cache_dir(request, "lmroute_deploy_wheel_src")
    _run(
        [DOCKER_SCRIPTS / "build_wheel.sh", out, sys.executable],
        timeout=900,
        env=os.environ | {"LMROUTE_WHEEL_WORKDIR": str(work)},
    )
    (whl,) = out.glob("lmroute-*.whl")
    return whl


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    venv = tmp_path_factory.mktemp("runtime") / "venv"
    _run([DOCKER_SCRIPTS / "install_runtime.sh", venv, wheel.parent], timeout=900)
    return venv


def _clean_env() -> dict[str, str]:
    """The environment without anything that would let the runtime venv see this checkout's packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    return env


def _venv_python(venv: Path, code: str, *, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return _run([venv / "bin" / "python", "-c", code], timeout=120, check=check, env=_clean_env(), cwd=cwd or venv)


def test_runtime_venv_holds_the_pins_and_the_wheel_only(runtime_venv: Path) -> None:
    proc = _venv_python(
        runtime_venv,
        "import importlib.metadata as m; "
        "print('\\n'.join(f\"{d.metadata['Name']}=={d.version}\" for d in m.distributions()))",
    )
    installed = {canonicalize_name(n): v for n, _, v in (line.partition("==") for line in proc.stdout.split())}
    for tool in ("pip", "setuptools", "wheel"):
        installed.pop(tool, None)
    want = {n: v for n, (_, v) in _pins(REPO / "requirements" / "runtime.txt").items()} | {"lmroute": "0.1.0"}
    assert installed == want


def test_runtime_venv_has_no_training_stack(runtime_venv: Path) -> None:
    for module in ("torch", "transformers", "optimum", "onnx"):
        proc = _venv_python(runtime_venv, f"import {module}", check=False)
        assert proc.returncode != 0 and f"No module named '{module}'" in proc.stderr, module
    where = _venv_python(
        runtime_venv, "import lmroute.service, lmroute.kernels._core as c; print(lmroute.service.__file__, c.__file__)"
    )
    assert all(p.startswith(str(runtime_venv)) for p in where.stdout.split()), where.stdout


def test_compiled_core_needs_only_libraries_the_image_installs(wheel: Path, runtime_venv: Path) -> None:
    """The wheel's compiled core links only against the base image's libraries (glibc, libstdc++,
    libgcc_s: every Debian slim image) and those install_runtime_os_deps.sh installs."""
    (core,) = (runtime_venv / "lib").glob("python3*/site-packages/lmroute/kernels/_core*.so")
    dynamic = _run(["readelf", "-d", core], timeout=30).stdout
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic))
    base = {
        "libc.so.6",
        "libm.so.6",
        "libstdc++.so.6",
        "libgcc_s.so.1",
        "libpthread.so.0",
        "libdl.so.2",
        "ld-linux-x86-64.so.2",
    }
    from_packages = {"libgomp.so.1": "libgomp1"}
    script = (DOCKER_SCRIPTS / "install_runtime_os_deps.sh").read_text()
    for lib in sorted(needed - base):
        assert lib in from_packages, f"_core needs {lib}: add its Debian package to install_runtime_os_deps.sh"
        assert re.search(rf"apt-get install .*\b{from_packages[lib]}\b", script), f"{from_packages[lib]} not installed"


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, exported_encoder_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("deploy_bundle")
    bert = make_fake_classifier(root / "bert.onnx")
    return make_tiny_bundle(root / "bundle", encoder_dir=exported_encoder_dir, bert_onnx=bert)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _probe(probe: Path, port: int, service: str | None = SERVICE) -> subprocess.CompletedProcess:
    cmd: list[str | Path] = [probe, f"-addr=127.0.0.1:{port}", "-connect-timeout=2s", "-rpc-timeout=2s"]
    if service is not None:
        cmd.append(f"-service={service}")
    return _run(cmd, timeout=30, check=False)


@dataclass
class Served:
    port: int
    proc: subprocess.Popen


@pytest.fixture(scope="module")
def served(
    runtime_venv: Path, tiny_bundle: Path, health_probe: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """`lmroute-serve` of the runtime venv on 127.0.0.1, waited for until the probe says SERVING."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve_log") / "stderr.txt"
    env = _clean_env() | {"LMROUTE_LOG_LEVEL": "warning", "LMROUTE_GRACE_S": "1"}
    with log.open("w") as err:
        proc = subprocess.Popen(
            [
                runtime_venv / "bin" / "lmroute-serve",
                "--bundle",
                tiny_bundle,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            cwd=tiny_bundle.parent,
        )
    try:
        deadline = time.monotonic() + 120
        while _probe(health_probe, port).returncode != 0:
            if proc.poll() is not None:
                pytest.fail(f"lmroute-serve exited {proc.returncode} before SERVING:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"lmroute-serve not SERVING after 120 s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield Served(port, proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_health_probe_sees_serving(served: Served, health_probe: Path) -> None:
    for service in (SERVICE, None):  # readiness (the router's service) and liveness (overall, "")
        proc = _probe(health_probe, served.port, service)
        assert proc.returncode == 0 and "status: SERVING" in proc.stdout + proc.stderr, proc


def test_health_probe_fails_when_it_should(served: Served, health_probe: Path) -> None:
    unknown = _probe(health_probe, served.port, "lmroute.v1.NoSuchService")
    assert unknown.returncode != 0 and "NotFound" in unknown.stdout + unknown.stderr, unknown
    closed = _probe(health_probe, _free_port())
    assert closed.returncode != 0, closed


def test_the_images_healthcheck_over_tls_and_mtls(
    dockerfile: list[Instruction],
    health_probe: Path,
    fake_servers: Callable[..., ServerThread],
    tmp_path: Path,
) -> None:
    """The Dockerfile's HEALTHCHECK command, run as Docker runs it (/bin/sh -c, the container's variables):
    healthy against a TLS port; against an mTLS port healthy with LMROUTE_HEALTH_TLS_CERT_FILE and
    LMROUTE_HEALTH_TLS_KEY_FILE naming a client certificate the client CA signed, unhealthy without."""
    import trustme

    [check] = [i.args for i in dockerfile if i.keyword == "HEALTHCHECK"]
    shell, flag, command = json.loads(check[check.index("CMD") + 3 :].strip())
    assert (shell, flag) == ("/bin/sh", "-c")
    ca, clients = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    chain, key, client_ca = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "clients-ca.pem"
    server.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    clients.cert_pem.write_to_path(str(client_ca))
    client = clients.issue_cert("health@example.test")
    client_chain, client_key = tmp_path / "health.pem", tmp_path / "health.key"
    client.private_key_pem.write_to_path(str(client_key))
    client_chain.write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems))

    def healthy(srv: ServerThread, **env: Path) -> subprocess.CompletedProcess:
        variables = {"PATH": f"{health_probe.parent}:/usr/bin:/bin", "LMROUTE_PORT": str(srv.server.port)}
        variables |= {name: str(value) for name, value in env.items()}
        return subprocess.run([shell, flag, command], env=variables, capture_output=True, text=True, timeout=30)

    tls = fake_servers(tls_cert_file=str(chain), tls_key_file=str(key))
    done = healthy(tls, LMROUTE_TLS_CERT_FILE=chain)
    assert done.returncode == 0 and "SERVING" in done.stdout + done.stderr, done
    mtls = fake_servers(tls_cert_file=str(chain), tls_key_file=str(key), tls_client_ca_file=str(client_ca))
    tls_env = {"LMROUTE_TLS_CERT_FILE": chain, "LMROUTE_TLS_CLIENT_CA_FILE": client_ca}
    refused = healthy(mtls, **tls_env)
    assert refused.returncode != 0, refused
    done = healthy(mtls, **tls_env, LMROUTE_HEALTH_TLS_CERT_FILE=client_chain, LMROUTE_HEALTH_TLS_KEY_FILE=client_key)
    assert done.returncode == 0 and "SERVING" in done.stdout + done.stderr, done


def test_route_from_the_runtime_venv_matches_the_bundle(served: Served, tiny_bundle: Path) -> None:
    from lmroute.export.evaluate import score_bundle

    bundle = load_bundle(tiny_bundle)
    want = {name: float(s[0]) for name, s in score_bundle(bundle, [PROMPT]).items()}
    pair = bundle.manifest.default_pair
    with RouterClient(f"127.0.0.1:{served.port}", timeout_s=30) as client:
        for router in ("mf", "bert"):
            r = client.route(PROMPT, router=router, strong_share=0.5)
            assert r.router == router and r.bundle_version == bundle.manifest.bundle_version
            assert abs(r.score - want[router]) <= 1e-6, (router, r.score, want[router])
            assert r.chosen_model == (pair.strong if r.score >= r.threshold else pair.weak)


def test_sigterm_drains_and_exits_zero(served: Served, health_probe: Path) -> None:
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=30) == 0
    assert _probe(health_probe, served.port).returncode != 0


# ---------------------------------------------------------------- the build stage's bundle step


def test_build_bundle_script_quick(request: pytest.FixtureRequest, tmp_path: Path, runtime_venv: Path) -> None:
    """scripts/docker/build_bundle.sh --quick with this environment (no setup.sh), then the runtime venv
    (no torch) loads and scores the bundle. The encoder/embedding cache lives in pytest's cache dir, so
    only the first run exports the encoder (~1 min more)."""
    cache = _cache_dir(request, "lmroute_deploy_export_cache")
    out = tmp_path / "bundle"
    _run(
        [
            DOCKER_SCRIPTS / "build_bundle.sh",
            "--python",
            sys.executable,
            "--out",
            out,
            "--quick",
            "--routers",
            "random",
            "mf",
            "sw_ranking",
            "--cache-dir",
            cache,
        ],
        timeout=600,
        env=os.environ | {"OMP_NUM_THREADS": "2"},
    )
    code = (  # through lmroute.bundle only: what the server reads
        "import json, sys\n"
        "from lmroute.bundle.loader import load_bundle\n"
        "b = load_bundle(sys.argv[1]); batch = b.prompt_batch([sys.argv[2]])\n"
        "print(json.dumps({name: float(r.score(batch)[0]) for name, r in b.routers.items()}))\n"
    )
    proc = _run([runtime_venv / "bin" / "python", "-c", code, out, PROMPT], timeout=120, env=_clean_env(), cwd=tmp_path)
    got = json.loads(proc.stdout)
    here = load_bundle(out)
    batch = here.prompt_batch([PROMPT])
    want = {name: float(r.score(batch)[0]) for name, r in here.routers.items()}
    assert sorted(got) == ["mf", "random", "sw_ranking"]
    for name, value in want.items():
        assert 0.0 <= got[name] <= 1.0 and abs(got[name] - value) <= 1e-6, (name, got[name], value)


# ---------------------------------------------------------------- deploy/k8s


def test_k8s_manifests_validate() -> None:
    proc = _run([REPO / "deploy" / "k8s" / "validate.sh", "-count=1", "-v"], timeout=900)
    out = proc.stdout
    for name in (
        "TestManifestsDecodeStrictlyAndPassChecks",
        "TestBrokenManifestsFail",
        "TestCopyOfManifestsPasses",
        "TestSharedManifestsDecodeStrictlyAndPassChecks",
        "TestBrokenSharedManifestsFail",
        "TestCopyOfSharedManifestsPasses",
    ):
        assert f"--- PASS: {name}" in out, out[-3000:]
    assert "--- FAIL" not in out
    assert len(re.findall(r"--- PASS: TestBrokenManifestsFail/", out)) >= 10
    assert len(re.findall(r"--- PASS: TestBrokenSharedManifestsFail/", out)) >= 10
