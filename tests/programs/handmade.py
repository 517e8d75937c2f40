#!/usr/bin/env python3
"""Small programs of our own for the cases no packaged program produces on demand.

Each is one subcommand. They print one word per step on stdout ("ready", "accepted",
"passed", ...) and take orders on stdin, so the driver (scenarios.py) waits for a
condition instead of sleeping. Each names itself (prctl PR_SET_NAME), so `ss -p` and the
exporter show which program holds what.

  reuseport NAME PORT accept|never   an SO_REUSEPORT listener; `accept` serves (reads
                                     to EOF, closes), `never` never calls accept()
  fd-sender PORT UNIX                accepts one connection, hands its fd over SCM_RIGHTS
                                     to the receiver on "pass", closes its copy, lives on
  fd-receiver UNIX                   receives that fd and holds it
  exec-holder PORT                   accepts one connection; on "exec" exec()s `sleep`
                                     in place, listener and connection kept across it
  pool-client URL SIZE               a `requests` Session (urllib3 pool) that fills SIZE
                                     pooled connections, says "pooled", then idles; on
                                     "again" it makes the same requests once more
  fanout PORT_BASE PORTS PROCESSES   listens on PORTS ports and closes what it accepts;
                                     PROCESSES children ("client-NN") connect to every
                                     port and never close: PORTS x PROCESSES outbound
                                     CLOSE_WAIT groups
"""

import ctypes
import os
import socket
import sys
import threading

PR_SET_NAME = 15


def set_name(name):
    """The process's comm (what /proc/PID/comm, `ss -p` and the exporter show)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME)")


def say(word):
    print(word, flush=True)


def wait_for_order(expected):
    """Blocks until the driver writes `expected` on stdin (EOF: exit quietly)."""
    for line in sys.stdin:
        if line.strip() == expected:
            return
    sys.exit(0)


def hold_forever(*keep):
    """Sleeps for good, keeping `keep` (sockets) referenced and so open."""
    threading.Event().wait()
    return keep


def listener(port, backlog=16, reuseport=False):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(backlog)
    return sock


def serve_until_eof(conn):
    with conn:
        while conn.recv(4096):
            pass


def reuseport(name, port, mode):
    set_name(name)
    sock = listener(int(port), reuseport=True)
    say("ready")
    if mode == "never":
        hold_forever(sock)
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=serve_until_eof, args=(conn,), daemon=True).start()


def serve_one(name, port, then):
    """Names itself, listens, accepts one connection, then waits for the order `then`."""
    set_name(name)
    sock = listener(int(port))
    say("ready")
    conn, _ = sock.accept()
    say("accepted")
    wait_for_order(then)
    return sock, conn


def fd_sender(port, unix_path):
    _, conn = serve_one("sender", port, "pass")
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    channel.connect(unix_path)
    socket.send_fds(channel, [b"fd"], [conn.fileno()])
    conn.close()
    say("passed")
    hold_forever()


def fd_receiver(unix_path):
    set_name("receiver")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(unix_path)
    server.listen(1)
    say("ready")
    channel, _ = server.accept()
    _, fds, _, _ = socket.recv_fds(channel, 16, 1)
    held = socket.socket(fileno=fds[0])
    say("received")
    hold_forever(held)


def exec_holder(port):
    sock, conn = serve_one("holder", port, "exec")
    os.set_inheritable(sock.fileno(), True)
    os.set_inheritable(conn.fileno(), True)
    say("exec")
    os.execvp("sleep", ["sleep", "3600"])


def pool_client(url, size):
    import requests  # PyPI; imported here so that the other programs need nothing

    set_name("poolclient")
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=int(size)))
    while True:
        # Streamed responses keep their connection checked out until read, so SIZE of
        # them in flight at once make SIZE connections; reading them returns all to the pool.
        responses = [session.get(url, stream=True) for _ in range(int(size))]
        for response in responses:
            response.raise_for_status()
            response.content
            response.close()
        say("pooled")
        wait_for_order("again")


def fanout(port_base, ports, processes):
    ports = [int(port_base) + i for i in range(int(ports))]
    # The clients are forked before any listener or thread exists, so that none of them
    # inherits a listener or a half-served connection; they connect when told to.
    children = []
    for n in range(int(processes)):
        go_read, go_write = os.pipe()
        done_read, done_write = os.pipe()
        if os.fork() == 0:
            set_name(f"client-{n:02}")
            os.read(go_read, 1)
            held = [socket.create_connection(("127.0.0.1", p)) for p in ports]
            os.write(done_write, b"x")
            hold_forever(held)
        children.append((go_write, done_read))
    listeners = [listener(p, backlog=64) for p in ports]
    for sock in listeners:
        threading.Thread(target=close_everything, args=(sock,), daemon=True).start()
    for go_write, _ in children:
        os.write(go_write, b"x")
    for _, done_read in children:
        os.read(done_read, 1)
    say("ready")
    hold_forever(listeners)


def close_everything(sock):
    while True:
        conn, _ = sock.accept()
        conn.close()


COMMANDS = {
    "reuseport": reuseport,
    "fd-sender": fd_sender,
    "fd-receiver": fd_receiver,
    "exec-holder": exec_holder,
    "pool-client": pool_client,
    "fanout": fanout,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
