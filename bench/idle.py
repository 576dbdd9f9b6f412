"""The guest kernel's idle policy: what a vCPU does when it has nothing to run.

On a VM, an idle vCPU that halts costs a wake-up through the hypervisor (an exit, then an
interrupt) the next time another core hands it work, and a proxied request crosses cores four
times in the harness's two-core layout. Linux's `cpuidle-haltpoll` driver can instead poll for
up to `guest_halt_poll_ns` before it halts: a wake-up within that window is a store the polling
vCPU sees, with no exit and no interrupt. Some VMs boot with it off (`guest_halt_poll_ns=0`),
which is why the report names the policy, and `--halt-poll NS` sets it for one run. Others
boot with no cpuidle driver at all (`none`): the window's parameter may still be there, but
nothing reads it, and every idle vCPU halts at once.
"""
from __future__ import annotations

from pathlib import Path

CPUIDLE = Path("/sys/devices/system/cpu/cpuidle")
HALT_POLL_NS = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def policy() -> dict:
    """The cpuidle driver and governor, and the halt-polling window (ns) when the driver has one."""
    ns = _read(HALT_POLL_NS)
    return {"driver": _read(CPUIDLE / "current_driver"),
            "governor": _read(CPUIDLE / "current_governor") or _read(CPUIDLE / "current_governor_ro"),
            "halt_poll_ns": int(ns) if ns is not None and ns.isdigit() else None}


def window(ns: int) -> str:
    return f"{ns / 1e6:g} ms" if ns >= 1_000_000 else f"{ns / 1e3:g} µs"


def describe(booted: dict, run_ns: int | None) -> str | None:
    """The report's line on the idle policy, or None when the machine does not say."""
    if not booted.get("driver"):
        return None
    line = f"- guest idle: cpuidle driver `{booted['driver']}`"
    if booted.get("governor"):
        line += f", governor `{booted['governor']}`"
    if booted["driver"] != "haltpoll":
        return (line + "; no halt polling (the `haltpoll` driver is not in use, so `guest_halt_poll_ns` has "
                "no effect): an idle vCPU halts at once, and each cross-core wake-up goes through the hypervisor")
    ns = booted.get("halt_poll_ns")
    if run_ns is not None:
        return (line + f"; **halt polling {window(run_ns)} for this run** (`--halt-poll {run_ns}`; before the run: "
                f"{window(ns) if ns else 'off, 0'}): an idle vCPU polls that long before it halts, "
                "so a cross-core wake-up within it costs no halt exit and no interrupt. The polling is idle "
                "time, in no process's CPU figure below, but the cores burn it")
    if ns == 0:
        return (line + "; halt polling off (`guest_halt_poll_ns=0`): an idle vCPU halts at once, and each "
                "cross-core wake-up goes through the hypervisor (`--halt-poll NS` sets a window for a run)")
    if ns is not None:
        return line + f"; halt polling up to {window(ns)} (`guest_halt_poll_ns`)"
    return line


class HaltPolling:
    """Sets `guest_halt_poll_ns` for a run and puts the old value back afterwards (root only)."""

    def __init__(self, ns: int):
        if ns < 0:
            raise SystemExit(f"--halt-poll: {ns} is not a window: give nanoseconds, 0 or more")
        self.ns, self.old = ns, None

    def __enter__(self) -> HaltPolling:
        self.apply()
        return self

    def apply(self) -> None:
        driver = policy()["driver"]
        if driver != "haltpoll":
            raise SystemExit(f"--halt-poll: the cpuidle driver is `{driver}`, not `haltpoll`: nothing on this "
                             "machine reads the window (the driver is chosen at boot)")
        old = _read(HALT_POLL_NS)
        if old is None:
            raise SystemExit(f"--halt-poll: {HALT_POLL_NS} is missing (no cpuidle-haltpoll driver on this machine)")
        try:
            HALT_POLL_NS.write_text(str(self.ns))
        except OSError as e:
            raise SystemExit(f"--halt-poll: cannot write {HALT_POLL_NS}: {e.strerror} (writing it needs root)") from e
        self.old = old

    def __exit__(self, *exc) -> None:
        self.restore()

    def restore(self) -> None:
        if self.old is not None:
            try:
                HALT_POLL_NS.write_text(self.old)
            except OSError:
                pass
            self.old = None
