"""Fault injection, a testing aid for the chaos suite; off unless the process starts with MLAPI_FAULT_INJECTION=1.

When on, SIGUSR1 arms a crash: the next `check()` (the API's reply reader calls it once per loop iteration)
raises `RuntimeError("injected fault")`, once. The signal handler only sets a flag. When off, nothing is
installed and SIGUSR1 keeps its default meaning (it ends the process).
"""

from __future__ import annotations

import asyncio
import os
import signal

ENV = "MLAPI_FAULT_INJECTION"


class Faults:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._armed = False

    @classmethod
    def from_environment(cls) -> Faults:
        """Read at start-up by the entry point's lifespan, never at import."""
        return cls(os.environ.get(ENV, "") == "1")

    def install(self) -> None:
        """Arm a crash on SIGUSR1, in the running event loop's thread; a no-op when off."""
        if self.enabled:
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self.arm)

    def uninstall(self) -> None:
        if self.enabled:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR1)

    def arm(self) -> None:
        self._armed = True

    def check(self) -> None:
        """Raise the armed fault once; costs one attribute read otherwise."""
        if self._armed:
            self._armed = False
            raise RuntimeError("injected fault")
