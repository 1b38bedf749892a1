"""Repositories this project needs, all local: nothing is downloaded.

Call `serializer_dependencies()` from a WORKSPACE (this one, or a consumer's after its
`local_repository`/`http_archive` named "serializer"). It defines

- `@serializer_python`: the Python interpreter named by the environment variable
  PYTHON_BIN_PATH (it must be able to `import torch`), registered as the Python toolchain;
- offline stand-ins for the repositories Bazel's built-in WORKSPACE suffix would otherwise
  fetch from the internet (`rules_cc`, `rules_java`, `remote_coverage_tools`). A repository
  of the same name that is already defined is left alone.
"""

def _python_interpreter_impl(rctx):
    path = rctx.os.environ.get("PYTHON_BIN_PATH", "")
    if not path:
        fail("PYTHON_BIN_PATH is not set. Point it at a Python interpreter that has torch, " +
             "e.g. `export PYTHON_BIN_PATH=$PWD/.venv/bin/python` before `bazel ...`, or pass " +
             "`--repo_env=PYTHON_BIN_PATH=/path/to/python`.")
    if "/" not in path:
        found = rctx.which(path)
        if not found:
            fail("PYTHON_BIN_PATH=%s: no such command on PATH" % path)
        path = str(found)
    elif not path.startswith("/"):
        fail("PYTHON_BIN_PATH=%s must be an absolute path (or a command on PATH)" % path)
    result = rctx.execute([path, "-c", "import sys, torch; print(sys.version.split()[0], torch.__version__)"])
    if result.return_code != 0:
        fail("PYTHON_BIN_PATH=%s cannot `import torch`; point it at an interpreter that can.\n%s%s" %
             (path, result.stdout, result.stderr))
    rctx.file("WORKSPACE", 'workspace(name = "%s")\n' % rctx.name)
    version, torch_version = result.stdout.strip().split("\n")[-1].split(" ")
    rctx.file("BUILD.bazel", "# Python %s with torch %s, from PYTHON_BIN_PATH.\n" % (version, torch_version) + """\
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

py_runtime(
    name = "python3",
    interpreter_path = "{path}",
    python_version = "PY3",
    stub_shebang = "#!{path}",
)

py_runtime_pair(
    name = "runtime_pair",
    py3_runtime = ":python3",
)

toolchain(
    name = "toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
    visibility = ["//visibility:public"],
)
""".replace("{path}", path))

python_interpreter = repository_rule(
    implementation = _python_interpreter_impl,
    environ = ["PYTHON_BIN_PATH"],
    local = True,
)

def _local_files_impl(rctx):
    rctx.file("WORKSPACE", 'workspace(name = "%s")\n' % rctx.name)
    for path, content in rctx.attr.files.items():
        rctx.file(path, content, executable = path.endswith(".sh"))

# A repository made of the given files (path -> content).
local_files = repository_rule(
    implementation = _local_files_impl,
    attrs = {"files": attr.string_dict()},
)

def _forwarders(names):
    return "".join(["def %s(**kwargs):\n    native.%s(**kwargs)\n\n" % (n, n) for n in names])

_CC_RULES = [
    "cc_binary",
    "cc_import",
    "cc_library",
    "cc_proto_library",
    "cc_test",
    "cc_toolchain",
    "cc_toolchain_suite",
    "fdo_prefetch_hints",
    "fdo_profile",
    "objc_import",
    "objc_library",
]

_JAVA_RULES = [
    "java_binary",
    "java_import",
    "java_library",
    "java_lite_proto_library",
    "java_package_configuration",
    "java_plugin",
    "java_proto_library",
    "java_runtime",
    "java_test",
    "java_toolchain",
]

_COVERAGE_SCRIPT = """#!/bin/sh
echo "$0: offline stand-in for @remote_coverage_tools (tools/bazel_rules/repositories.bzl); no coverage report is made" >&2
"""

def serializer_dependencies():
    """Defines the repositories above and registers the Python toolchain."""
    existing = native.existing_rules()
    if "serializer_python" not in existing:
        python_interpreter(name = "serializer_python")
    if "rules_cc" not in existing:
        local_files(name = "rules_cc", files = {
            "BUILD.bazel": "",
            "cc/BUILD.bazel": 'alias(name = "toolchain_type", actual = "@bazel_tools//tools/cpp:toolchain_type", visibility = ["//visibility:public"])\n',
            "cc/defs.bzl": _forwarders(_CC_RULES),
        })
    if "rules_java" not in existing:
        local_files(name = "rules_java", files = {
            "BUILD.bazel": "",
            "java/BUILD.bazel": "",
            "java/defs.bzl": _forwarders(_JAVA_RULES),
        })
    if "remote_coverage_tools" not in existing:
        local_files(name = "remote_coverage_tools", files = {
            "stand_in.sh": _COVERAGE_SCRIPT,
            "BUILD.bazel": "\n".join([
                'sh_binary(name = "%s", srcs = ["stand_in.sh"], visibility = ["//visibility:public"])' % n
                for n in ["coverage_report_generator", "lcov_merger"]
            ]) + "\n",
        })
    native.register_toolchains("@serializer_python//:toolchain")
