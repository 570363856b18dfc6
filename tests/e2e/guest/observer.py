#!/usr/bin/python3
"""The e2e observer baked into pibake's bootable test fixtures.

It does two jobs, both only when the harness's virtio port (org.pibake.e2e) exists, so on
anything but a test VM it never starts (udev starts it when the port appears):

* It reports on the serial console (/dev/console = ttyS0): its own start, every IPv4 address
  that appears or goes (with the CLOCK_MONOTONIC time systemd also uses, so the harness can
  compare "eth0 got 192.168.5.1" with "pibake-dnsmasq became active"), and every command the
  harness runs. A failed test's serial log therefore tells the story of the boot.
* It answers the harness on the virtio port: one JSON object a line, {"id", "cmd", "timeout"}
  in, {"id", "rc", "out"} back, the command run by bash. The harness uses it to observe the
  master and to drive the worker and the upstream; it never configures the master's network.

It must not influence what it observes: no network configuration of its own, no ordering
against network units, nothing written outside /run.
"""
import json
import os
import subprocess
import sys
import threading
import time

PORT = "/dev/virtio-ports/org.pibake.e2e"
STATE = "/run/pibake-e2e"
_console_lock = threading.Lock()


def report(msg):
    """One line on the serial console, prefixed so the harness and a reader can find it."""
    line = "pibake-e2e [%8.2f] %s\n" % (time.monotonic(), msg)
    with _console_lock:
        try:
            with open("/dev/console", "w") as con:
                con.write(line)
        except OSError:
            pass
        with open(os.path.join(STATE, "events.log"), "a") as log:
            log.write(line)


def watch_addresses():
    """Log IPv4 addresses as they come and go: the timeline item 4 of the test is judged on."""
    report("addresses at start: " + subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout.replace("\n", " | "))
    mon = subprocess.Popen(["ip", "-o", "-4", "monitor", "address"], stdout=subprocess.PIPE, text=True)
    for line in mon.stdout:
        fields = line.split()
        # "[Deleted] N: IFACE inet ADDR/LEN ..." -> "addr+ IFACE ADDR/LEN" / "addr- ..."
        gone = fields and fields[0] == "Deleted"
        if gone:
            fields = fields[1:]
        if len(fields) >= 4 and fields[2] == "inet":
            report("addr%s %s %s" % ("-" if gone else "+", fields[1], fields[3]))


def run(request):
    """Run one harness command; its output and exit code go back, its first line to the console."""
    cmd = request["cmd"]
    try:
        done = subprocess.run(["bash", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=request.get("timeout", 60))
        rc, out = done.returncode, done.stdout.decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        rc, out = 124, (e.stdout or b"").decode(errors="replace") + "\n(timed out)"
    report("ran #%s rc=%d: %s" % (request.get("id"), rc, cmd.splitlines()[0][:120]))
    return {"id": request.get("id"), "rc": rc, "out": out}


def serve():
    port = open(PORT, "r+b", buffering=0)
    boot_id = open("/proc/sys/kernel/random/boot_id").read().strip()
    port.write((json.dumps({"hello": boot_id, "uptime": time.monotonic()}) + "\n").encode())
    buf = b""
    while True:
        chunk = port.read(4096)
        if not chunk:  # host side not connected yet, or gone: wait rather than spin
            time.sleep(0.2)
            continue
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                request = json.loads(line)
            except ValueError:
                continue  # noise from a harness that reconnected mid-line
            port.write((json.dumps(run(request)) + "\n").encode())


def main():
    os.makedirs(STATE, exist_ok=True)
    report("observer up, boot %s" % open("/proc/sys/kernel/random/boot_id").read().strip())
    threading.Thread(target=watch_addresses, daemon=True).start()
    serve()


if __name__ == "__main__":
    sys.exit(main())
