"""What pyproject.toml cannot say: the wheel leaves out the tests that live beside the code
(``*_test.py``), which setuptools would otherwise install as modules of the package."""

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithoutTests(build_py):  # type: ignore[misc]
    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        modules = super().find_package_modules(package, package_dir)
        return [(pkg, mod, path) for pkg, mod, path in modules if not mod.endswith("_test")]


setup(cmdclass={"build_py": BuildPyWithoutTests})
