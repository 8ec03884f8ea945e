"""Print the pip requirements that pin every runtime dependency to its declared lower bound (pyproject.toml).

CI installs them over the newest-versions environment and runs the loader tests again, so that a lower bound is a
version that was tested, not a guess. torch is left as installed: its wheels are the machine's local ones.
transformers comes with its own `kernels` extra, so the kernelized load is exercised at the lower end too.
"""

import re
import sys
from pathlib import Path

import tomllib

SKIP = {"torch"}  # CI's torch is the build on local disk (see .ci/run)
EXTRAS = {"transformers": "[kernels]"}


def lowest(pyproject: Path) -> list[str]:
    out = []
    for requirement in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)", requirement)
        if match is None:
            sys.exit(f"{requirement!r}: every runtime dependency needs a plain '>=' lower bound for this check")
        name, version = match.groups()
        if name not in SKIP:
            out.append(f"{name}{EXTRAS.get(name, '')}=={version}")
    return out


if __name__ == "__main__":
    print("\n".join(lowest(Path(__file__).resolve().parents[1] / "pyproject.toml")))
