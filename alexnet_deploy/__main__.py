"""``python -m alexnet_deploy``: the command list (each console script with its one-line help).

``python -m alexnet_deploy COMMAND ARGS...`` runs a command (``predict`` or ``alexnet-predict``) as its console
script would, for environments where the scripts are not on PATH; ``--version`` prints the package version.
Only click and the cli modules are imported (their heavy imports happen inside the commands).
"""
from __future__ import annotations

import importlib
import sys

DIST = "alexnet-deploy"


def commands() -> dict[str, object]:
    """Console-script name -> click command, from the installed distribution's entry points (pyproject's
    [project.scripts]); from ``alexnet_deploy.cli``'s ``*_main`` names when the package is not installed."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        eps = [ep for ep in distribution(DIST).entry_points if ep.group == "console_scripts"]
    except PackageNotFoundError:
        eps = []
    if eps:
        out = {}
        for ep in sorted(eps, key=lambda e: e.name):
            module, _, attr = ep.value.partition(":")
            out[ep.name] = getattr(importlib.import_module(module), attr.strip())
        return out
    cli = importlib.import_module("alexnet_deploy.cli")
    return {f"alexnet-{name[:-len('_main')]}": getattr(cli, name) for name in sorted(cli.__all__)}


def command_list() -> str:
    cmds = commands()
    width = max(len(n) for n in cmds)
    lines = [f"alexnet-deploy {_version()}: PyTorch AlexNet -> verified ONNX / INT8 / TensorRT deployments.", "",
             "Commands (run one with --help for its options):"]
    lines += [f"  {name:<{width}}  {cmd.get_short_help_str(limit=100)}" for name, cmd in cmds.items()]
    lines += ["", "Also: python -m alexnet_deploy COMMAND [ARGS]... (e.g. `predict`), --version.",
              "Python API and shell completion: docs/python-api.md"]
    return "\n".join(lines)


def _version() -> str:
    from alexnet_deploy import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(command_list())
        return 0
    if args[0] == "--version":
        print(f"{DIST}, version {_version()}")
        return 0
    cmds = commands()
    name = args[0] if args[0] in cmds else f"alexnet-{args[0]}"
    if name not in cmds:
        print(f"error: unknown command {args[0]!r}; choose one of {', '.join(cmds)}", file=sys.stderr)
        return 2
    return cmds[name].main(args[1:], prog_name=name, standalone_mode=True)  # exits with the command's code


if __name__ == "__main__":
    sys.exit(main())
