"""`scripts/system-deps.sh`: which packages it installs, how (root, sudo -n) or the one message.

Runs the real script with a PATH of stand-in tools, so nothing is installed: `apt-get` records
its arguments and, like the real one, puts the commands of the packages it installs on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "system-deps.sh"
BASH = shutil.which("bash") or "/bin/bash"
TOOLS = ("redis-server", "kcat", "ffmpeg", "java", "mvn", "promtool", "g++", "python3", "kubectl")
PROVIDES = {
    "redis-server": "redis-server",
    "kcat": "kcat",
    "ffmpeg": "ffmpeg",
    "maven": "mvn",
    "prometheus": "promtool",
    "g++": "g++",
    "openjdk-17-jre-headless": "java",
    "openjdk-21-jre-headless": "java",
}


def tool(bin_dir: Path, name: str, body: str = "exit 0") -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


class Machine:
    """A PATH of stand-in tools: `uid`, `sudo` (absent, asks a password, or password-less)."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        self.log = root / "apt.log"
        for name in TOOLS:
            tool(self.bin, name)
        tool(self.bin, "java", "echo 'openjdk version \"17.0.15\" 2025-04-15' >&2")
        tool(self.bin, "id", 'echo "${FAKE_UID:-0}"')
        tool(self.bin, "apt-cache", '[ "$2" = openjdk-17-jre-headless ] && [ -z "$NO_JDK17" ]')
        installs = " ".join(
            f'{package}) printf "#!/bin/sh\\necho \'version \\"21\\"\' >&2\\n" > "$BIN/{cmd}"; '
            f'/bin/chmod +x "$BIN/{cmd}";;'
            for package, cmd in PROVIDES.items()
        )
        tool(
            self.bin,
            "apt-get",
            f'echo "$*" >> "{self.log}"\n'
            f'[ -n "$APT_INSTALLS_NOTHING" ] && exit 0\n'
            f'BIN="{self.bin}"\nfor p; do case "$p" in {installs} esac; done',
        )
        tool(self.bin, "env", 'while [ "${1#*=}" != "$1" ]; do export "$1"; shift; done; exec "$@"')

    def remove(self, *names: str) -> Machine:
        for name in names:
            (self.bin / name).unlink()
        return self

    def sudo(self, password_less: bool) -> Machine:
        body = '[ "$1" = -n ] && shift; "$@"' if password_less else "exit 1"
        tool(self.bin, "sudo", body)
        return self

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        environ = {"PATH": str(self.bin), "HOME": str(self.bin.parent), **env}
        return subprocess.run(
            [BASH, str(SCRIPT), *args], env=environ, capture_output=True, text=True, timeout=60
        )

    def apt_calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path)


def test_nothing_missing_does_nothing(machine: Machine) -> None:
    done = machine.run()
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert machine.apt_calls() == []


def test_root_installs_what_is_missing_and_proceeds(machine: Machine) -> None:
    machine.remove("redis-server", "kcat", "mvn", "java")
    done = machine.run()
    assert done.returncode == 0, done.stderr
    assert machine.apt_calls() == [
        "update -q",
        "install -y -q redis-server kcat openjdk-17-jre-headless maven",
    ]
    assert machine.run().returncode == 0  # now everything is there
    assert len(machine.apt_calls()) == 2


def test_dry_run_prints_the_plan_and_changes_nothing(machine: Machine) -> None:
    machine.remove("promtool", "g++")
    done = machine.run("--dry-run")
    assert done.returncode == 0
    assert done.stdout.splitlines() == [
        "would run: env DEBIAN_FRONTEND=noninteractive apt-get update -q",
        "would run: env DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus g++",
    ]
    assert machine.apt_calls() == []


def test_password_less_sudo_is_used_when_not_root(machine: Machine) -> None:
    machine.remove("ffmpeg").sudo(password_less=True)
    done = machine.run("--dry-run", FAKE_UID="1000")
    assert done.returncode == 0
    assert "would run: sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -q ffmpeg" in (
        done.stdout
    )


@pytest.mark.parametrize(
    ("sudo", "command"),
    [
        (None, "su -c 'apt-get update && apt-get install -y redis-server ffmpeg'"),
        (False, "sudo apt-get update && sudo apt-get install -y redis-server ffmpeg"),
    ],
)
def test_without_root_it_stops_with_one_message(
    machine: Machine, sudo: bool | None, command: str
) -> None:
    machine.remove("redis-server", "ffmpeg")
    if sudo is not None:
        machine.sudo(password_less=sudo)
    done = machine.run(FAKE_UID="1000")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.endswith(f"again:  {command}\n")
    assert machine.apt_calls() == []


def test_old_or_missing_java_picks_a_runtime_the_lists_offer(machine: Machine) -> None:
    tool(machine.bin, "java", "echo 'java version \"1.8.0_392\"' >&2")
    done = machine.run("--dry-run")
    assert done.stdout.endswith("apt-get install -y -q openjdk-17-jre-headless\n")
    machine.remove("java")
    done = machine.run("--dry-run", NO_JDK17="1")
    assert done.stdout.endswith("apt-get install -y -q default-jre-headless\n")


def test_python_without_venv_needs_python3_venv(machine: Machine) -> None:
    tool(machine.bin, "python3", "exit 1")
    assert machine.run("--dry-run").stdout.endswith("install -y -q python3-venv\n")


def test_without_apt_it_names_what_to_install(machine: Machine) -> None:
    machine.remove("apt-get", "kcat", "java")
    done = machine.run()
    assert done.returncode == 1
    assert done.stderr.startswith("missing system tools for: kcat Java 17+.")
    assert "Debian/Ubuntu only" in done.stderr


def test_a_package_that_leaves_its_tool_missing_is_an_error(machine: Machine) -> None:
    machine.remove("kcat")
    done = machine.run(APT_INSTALLS_NOTHING="1")
    assert done.returncode == 1
    assert "still not found on PATH" in done.stderr and done.stderr.rstrip().endswith("kcat")


def test_kustomize_comes_from_go_when_there_is_no_kubectl(machine: Machine) -> None:
    machine.remove("kubectl")
    tool(machine.bin, "go")
    done = machine.run("--dry-run")
    assert done.stdout == "would run: go install sigs.k8s.io/kustomize/kustomize/v5@v5.5.0\n"
    machine.remove("go")
    assert "manifest checks will skip" in machine.run().stderr


def test_the_script_is_executable() -> None:
    assert os.access(SCRIPT, os.X_OK)
