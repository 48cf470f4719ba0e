"""Capture loopback traffic with ``tcpdump`` around a run.

``Capture`` starts ``tcpdump -i lo -U --immediate-mode -w FILE <filter>``, waits until
tcpdump says it is listening (so no packet of the run is missed), and on exit stops it with
SIGINT so that it flushes and closes the file; the packet counts tcpdump prints at exit are
kept. Immediate mode matters: without it the kernel hands packets over in blocks, and the
packets of the last block before SIGINT never reach the file.

    with Capture(Path("run.pcap"), port=3333) as cap:
        ...  # traffic on tcp port 3333
    print(cap.result.packets_captured)
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_COUNT = re.compile(r"(\d+) packets? (captured|received by filter|dropped by kernel)")


@dataclass(frozen=True)
class CaptureResult:
    """The finished capture file and tcpdump's own counts."""

    path: Path
    bpf_filter: str
    interface: str
    packets_captured: int | None
    packets_dropped: int | None
    stderr: str


class Capture:
    """Run ``tcpdump`` on a loopback interface into ``path`` while the ``with`` block runs.

    Either ``port`` (meaning ``tcp port PORT``) or an explicit BPF ``bpf_filter`` selects
    the traffic. ``interface`` defaults to ``lo``. ``buffer_kib`` is the kernel capture
    buffer (``tcpdump -B``): at tcpdump's default of 2 MiB, fleets of thousands of clients on
    a loaded machine lost up to a third of their packets ("dropped by kernel"); the default
    here is 64 MiB.
    """

    def __init__(
        self,
        path: Path,
        *,
        port: int | None = None,
        bpf_filter: str | None = None,
        interface: str = "lo",
        tcpdump: str | None = None,
        start_timeout: float = 10.0,
        buffer_kib: int = 65536,
    ) -> None:
        if bpf_filter is None:
            if port is None:
                raise ValueError("give a port or a BPF filter: a capture of all of lo is noise")
            bpf_filter = f"tcp port {int(port)}"
        self.path = Path(path)
        self.bpf_filter = bpf_filter
        self.interface = interface
        exe = tcpdump or shutil.which("tcpdump") or "/usr/bin/tcpdump"
        self.tcpdump = exe
        self.start_timeout = start_timeout
        self.buffer_kib = buffer_kib
        self.result: CaptureResult | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: list[str] = []
        self._listening = threading.Event()
        self._reader: threading.Thread | None = None

    def _read_stderr(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for raw in self._process.stderr:
            line = raw.decode(errors="replace")
            self._stderr.append(line)
            if "listening on" in line:
                self._listening.set()
        self._listening.set()

    def start(self) -> Capture:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        command = [
            self.tcpdump,
            "-i",
            self.interface,
            "-U",
            "--immediate-mode",
            "-B",
            str(self.buffer_kib),
            "-n",
            "-s",
            "0",
            "-Z",
            "root",
            "-w",
            str(self.path),
            self.bpf_filter,
        ]
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if not self._listening.wait(self.start_timeout) or self._process.poll() is not None:
            self._process.kill()
            self._process.wait()
            raise RuntimeError(
                f"tcpdump did not start listening on {self.interface}: {''.join(self._stderr)}"
            )
        # tcpdump prints "listening on" just before its capture loop; give it a moment.
        time.sleep(0.2)
        return self

    def stop(self) -> CaptureResult:
        if self.result is not None:
            return self.result
        process = self._process
        if process is None:
            raise RuntimeError("the capture was never started")
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.terminate()
                process.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(5)
        text = "".join(self._stderr)
        counts = {kind: int(n) for n, kind in _COUNT.findall(text)}
        self.result = CaptureResult(
            path=self.path,
            bpf_filter=self.bpf_filter,
            interface=self.interface,
            packets_captured=counts.get("captured"),
            packets_dropped=counts.get("dropped by kernel"),
            stderr=text,
        )
        return self.result

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_udp(port: int, *, drained: bool = False, timeout: float = 30.0) -> None:
    """Wait until a UDP socket is bound to ``127.0.0.1:port`` (a collector such as ``nfcapd``
    is ready), or with ``drained`` until its receive queue is empty (it has read everything
    sent to it). Reads ``/proc/net/udp``, so it sends nothing; raises ``TimeoutError``."""
    from minewatch.net.collector import udp_sockets

    local = f"0100007F:{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(u.local == local and (not drained or u.rx_queue == 0) for u in udp_sockets()):
            return
        time.sleep(0.05)
    state = "drained" if drained else "bound"
    raise TimeoutError(f"no UDP socket {state} on 127.0.0.1:{port} after {timeout} s")
