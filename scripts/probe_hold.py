"""What scripts/probe-connect and scripts/probe-connect-stages share: the
tunnels a held bench prints (BENCH_HOLD=1), and one bench sample."""
import re
import socket
import time


def tunnels_of(path):
    """[(name, pid, echo port)] of the two tunnels in BENCH_HOLD output."""
    tunnels = []
    for line in open(path):
        m = re.match(r"(.+): pid (\d+), echo 127\.0\.0\.1:(\d+)", line)
        if m:
            tunnels.append((m.group(1), int(m.group(2)), int(m.group(3))))
    if len(tunnels) != 2:
        raise SystemExit(f"{path}: expected two 'NAME: pid N, echo 127.0.0.1:PORT' lines (BENCH_HOLD output), found {len(tunnels)}")
    return tunnels


def sample(port):
    """The bench's new-connection sample (connect, 4-byte echo, close), in us."""
    t = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"ping")
    got = b""
    while len(got) < 4:
        chunk = s.recv(4 - len(got))
        if not chunk:
            raise SystemExit(f"127.0.0.1:{port} closed before echoing")
        got += chunk
    s.close()
    return (time.perf_counter() - t) * 1e6
