#!/usr/bin/python3
"""A TCP service for the e2e test: tells each client which address it came from, and logs it.

    peer-echo.py PORT LOGFILE

The upstream runs it so the harness can see whether the worker's connections arrive
masqueraded as the master's uplink address; the worker runs it so the harness can check that
nothing from the uplink side gets in.
"""
import socket
import sys
import time

port, logfile = int(sys.argv[1]), sys.argv[2]
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", port))
srv.listen(16)
while True:
    conn, (peer, _) = srv.accept()
    with open(logfile, "a") as log:
        log.write("%.2f %s\n" % (time.monotonic(), peer))
    try:
        conn.sendall(("peer %s\n" % peer).encode())
    finally:
        conn.close()
