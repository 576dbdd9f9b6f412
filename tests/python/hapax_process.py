"""Starts a real `hapax serve` for the Python tests and reads its ready line.

`$HAPAX_BIN` names the binary (default: /var/cache/hapax/target/debug/hapax).
"""

import contextlib
import os
import queue
import subprocess
import tempfile
import threading

import pytest

READY_TIMEOUT_S = 30


def hapax_bin():
    return os.environ.get("HAPAX_BIN") or "/var/cache/hapax/target/debug/hapax"


@contextlib.contextmanager
def running_gateway(make_config, require=("http",)):
    """Yields `(fields, tmp)`: the `key=value` fields of the ready line
    (`hapax listening http=ADDR [h3=ADDR ...]`) and the temporary directory.
    `make_config(tmp)` returns the YAML text (it may write files, e.g. certificates, into tmp).
    The process is killed on exit; its stderr is shown if it never becomes ready."""
    binary = hapax_bin()
    assert os.path.isfile(binary), f"{binary} not found: run `cargo build --bins` or set HAPAX_BIN"
    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "config.yaml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(make_config(tmp))
        env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "RUST_LOG")}
        stderr_path = os.path.join(tmp, "stderr.log")
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(
                [binary, "serve", "--config", config],
                cwd=tmp,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        lines = queue.Queue()

        def drain():
            # Keeps reading so the pipe never fills.
            for raw in process.stdout:
                lines.put(raw.decode("utf-8", "replace"))

        threading.Thread(target=drain, daemon=True).start()
        try:
            fields = None
            while fields is None:
                try:
                    line = lines.get(timeout=READY_TIMEOUT_S)
                except queue.Empty:
                    break
                if "listening http=" in line:
                    rest = line.split("listening ", 1)[1].split()
                    fields = dict(kv.split("=", 1) for kv in rest if "=" in kv)
            if fields is None or any(k not in fields for k in require):
                with open(stderr_path, encoding="utf-8", errors="replace") as f:
                    pytest.fail(f"gateway did not report {', '.join(require)}:\n{f.read()}")
            yield fields, tmp
        finally:
            process.kill()
            process.wait(timeout=30)
