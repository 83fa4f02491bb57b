"""Real servers from Debian for the tests: installed with apt-get when missing, run on loopback."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess


@functools.cache
def _apt_updated() -> None:
    subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=600)


def debian_binary(binary: str, package: str) -> str:
    """The path of ``binary``, installing the Debian ``package`` that ships it when it is missing."""
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found:
        return found
    _apt_updated()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
        check=True,
        capture_output=True,
        env=env,
        timeout=900,
    )
    found = shutil.which(binary, path="/usr/sbin:/usr/bin:/sbin:/bin")
    assert found, f"apt-get installed {package} but {binary} is not on the path"
    return found
