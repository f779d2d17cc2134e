from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path, PurePosixPath

import pytest
from _readme import plugin_snippet

import guard

ROOT = Path(__file__).resolve().parent.parent

# Files a developer's checkout gathers that no distribution may carry.
JUNK = {
    ".ci/secrets.env": "GUARD_ONECLICKDZ_API_KEY=not-for-the-sdist\n",
    ".coverage": "",
    "guard/__pycache__/_guard.cpython-311.pyc": "",
    "tests/__pycache__/conftest.cpython-311.pyc": "",
    "tests/.hypothesis/examples/0/1": "",
    "examples/.pytest_cache/v/cache/lastfailed": "{}",
    "benchmarks/.mypy_cache/3.11/x.json": "{}",
}

# What the tests, run from an unpacked sdist, need beside the package.
SDIST_NEEDS = (
    "LICENSE",
    "README.md",
    "CHANGELOG.md",
    "MANIFEST.in",
    "setup.cfg",
    "setup.py",
    "_guard_pytest_plugin.py",
    "guard/py.typed",
    "tests/conftest.py",
    "tests/_redis_server.py",
    "tests/_redis_worker.py",
    "tests/typing/api.py",
    "examples/test_with_plugin.py",
    "benchmarks/README.md",
)

# A fast part of the suite, without Redis, to run from the unpacked sdist:
# the engine's tests need its conftest.py and its pytest settings.
SDIST_TESTS = (
    "tests/test_amount.py",
    "tests/test_errors.py",
    "tests/test_exported_members.py",
    "tests/test_guard.py",
)
PYTEST = (sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider")


def test_version_matches_metadata() -> None:
    """The installed distribution's version is guard.__version__."""
    assert guard.__version__ == metadata.version("guard")


def test_typed() -> None:
    """The package ships its py.typed marker."""
    assert (Path(guard.__file__).parent / "py.typed").is_file()


def is_junk(path: PurePosixPath) -> bool:
    return path.suffix in {".pyc", ".pyo"} or any(
        part.startswith(".") or part == "__pycache__" for part in path.parts
    )


def source_files(*tops: str) -> set[str]:
    """
    The files of the checkout under *tops*, junk aside.
    """
    found = set()
    for top in tops:
        for path in (ROOT / top).rglob("*"):
            relative = PurePosixPath(path.relative_to(ROOT).as_posix())
            if path.is_file() and not is_junk(relative):
                found.add(str(relative))
    return found


def without_coverage() -> dict[str, str]:
    """
    The environment, less what would make coverage measure a child process:
    guard built or tested from a copy must not count as guard's coverage.
    """
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("COVERAGE_", "COV_CORE_"))
    }


class Built:
    def __init__(self, sdist: Path, wheel: Path) -> None:
        self.sdist = sdist
        self.wheel = wheel
        with tarfile.open(sdist) as tar:
            top, *_ = tar.getnames()
            self.sdist_top = top.split("/")[0]
            self.sdist_files = {
                str(PurePosixPath(m.name).relative_to(self.sdist_top))
                for m in tar.getmembers()
                if m.isfile()
            }
        with zipfile.ZipFile(wheel) as whl:
            self.wheel_files = {n for n in whl.namelist() if not n.endswith("/")}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """
    The sdist and, built from it, the wheel of a copy of the checkout that
    carries a developer's junk.
    """
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"
    shutil.copytree(
        ROOT,
        source,
        # The checkout's own junk (a virtualenv, caches) is left behind:
        # JUNK below stands for it.
        ignore=shutil.ignore_patterns(
            ".*", "__pycache__", "*.egg-info", "build", "dist", "venv"
        ),
    )
    for name, text in JUNK.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(text)
    out = tmp / "dist"
    subprocess.run(  # noqa: S603 - our own argv
        [sys.executable, "-m", "build", "--outdir", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
        env=without_coverage(),
    )
    (sdist,) = out.glob("guard-*.tar.gz")
    (wheel,) = out.glob("guard-*.whl")
    return Built(sdist, wheel)


@pytest.mark.packaging
class TestDistributions:
    def test_wheel_has_the_package_and_no_tests(self, built: Built) -> None:
        """
        The wheel holds every guard module, py.typed and the plugin's entry
        module, its metadata and licence, and nothing else.
        """
        package = source_files("guard") | {"_guard_pytest_plugin.py"}
        dist_info = f"guard-{guard.__version__}.dist-info"

        ours = {n for n in built.wheel_files if not n.startswith(dist_info + "/")}

        assert "guard/py.typed" in ours
        assert package == ours
        assert not any(n.startswith("tests/") for n in built.wheel_files)
        with zipfile.ZipFile(built.wheel) as whl:
            names = whl.namelist()
            assert any(n.endswith("LICENSE") for n in names if "dist-info" in n)
            entry_points = whl.read(f"{dist_info}/entry_points.txt").decode()
        assert "guard = _guard_pytest_plugin" in entry_points

    def test_sdist_is_complete(self, built: Built) -> None:
        """
        The sdist holds the package, the tests with their helpers, the
        examples, the benchmarks, the docs and the licence.
        """
        expected = source_files("guard", "tests", "examples", "benchmarks")

        assert set(SDIST_NEEDS) <= built.sdist_files
        assert expected <= built.sdist_files
        licence = (ROOT / "LICENSE").read_text()
        assert licence.startswith("MIT License")
        assert "Copyright (c) 2026 the guard authors" in licence

    def test_sdist_has_no_junk(self, built: Built) -> None:
        """No CI script or secret, cache or bytecode gets into the sdist."""
        junk = sorted(n for n in built.sdist_files if is_junk(PurePosixPath(n)))

        assert [] == junk

    def test_tests_run_from_the_unpacked_sdist(
        self, built: Built, tmp_path: Path
    ) -> None:
        """
        A fast part of the suite passes in the unpacked sdist, importing
        guard from there.
        """
        with tarfile.open(built.sdist) as tar:
            tar.extractall(tmp_path, filter="data")
        unpacked = tmp_path / built.sdist_top
        env = without_coverage()

        where = subprocess.run(
            [sys.executable, "-c", "import guard; print(guard.__file__)"],
            cwd=unpacked,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        tests = subprocess.run(  # noqa: S603 - our own argv
            [*PYTEST, *SDIST_TESTS],
            cwd=unpacked,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

        assert Path(where.strip()).is_relative_to(unpacked)
        assert 0 == tests.returncode, tests.stdout + tests.stderr
        assert " passed" in tests.stdout

    def test_plugin_in_a_fresh_environment(self, built: Built, tmp_path: Path) -> None:
        """
        With nothing but the wheel (and what it pulls in) and pytest
        installed, the README's plugin example and the plugin example file
        pass in a project with no configuration.
        """
        venv = tmp_path / "venv"
        python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
        env = without_coverage()
        subprocess.run(  # noqa: S603 - our own argv
            [sys.executable, "-m", "venv", str(venv)], check=True, timeout=120
        )
        subprocess.run(  # noqa: S603 - our own argv
            [python, "-m", "pip", "install", "-q", built.wheel, "pytest"],
            check=True,
            capture_output=True,
            env=env,
            timeout=300,
        )
        project = tmp_path / "project"
        project.mkdir()
        (project / "test_readme.py").write_text(plugin_snippet())
        shutil.copy(ROOT / "examples" / "test_with_plugin.py", project)

        result = subprocess.run(  # noqa: S603 - our own argv
            [python, "-m", "pytest", "-W", "error", "-p", "no:cacheprovider"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

        assert 0 == result.returncode, result.stdout + result.stderr
        assert "6 passed" in result.stdout
