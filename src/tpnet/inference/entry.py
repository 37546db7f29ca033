"""The ``tpnet-infer`` command. Importing the tool (torch, OpenCV) takes seconds: a Ctrl-C during that time
must end the command as quietly as one during the run (exit 130, no traceback), so the import happens here,
inside the handler. SIGTERM before start needs nothing: its default action ends the process silently."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    try:
        from tpnet.inference.cli import main as run
    except KeyboardInterrupt:
        print("tpnet-infer: interrupted (SIGINT) before it started; nothing was written", file=sys.stderr)
        return 130
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
