"""Virtual machines for pibake's boot test: qemu, the image's own kernel, and the observer.

A VM boots an image the way a Pi would boot the card, as far as an amd64 emulator can: the
kernel and initramfs come from the image's rootfs /boot and the kernel command line from its
bootfs cmdline.txt, read with debugfs and mtools (not with pibake, which is under test). The
disk is a qemu snapshot (copy-on-write in a temporary file), so no image is ever modified, and
it survives the guest's own reboots because the qemu process does.

Networking is qemu UDP socket netdevs between two ports of 127.0.0.1, one per end of a link:
no tap, no bridge, no host networking (-nodefaults removes qemu's default user-mode NIC).

The observer in the image (guest/observer.py) answers on a virtio-serial port, which qemu
exposes here as a unix socket: Agent.run() sends it a shell command and returns (rc, output).
"""
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time


class E2EError(Exception):
    """A failure of the harness or the machine it needs, as opposed to a failed check."""


# ------------------------------------------------------------------------------ images
def partitions(image):
    """[(start_byte, size_bytes, type)] of an MBR image, read with sfdisk."""
    out = subprocess.run(["sfdisk", "-J", image], capture_output=True, text=True, check=True).stdout
    table = json.loads(out)["partitiontable"]
    return [(p["start"] * 512, p["size"] * 512, p["type"]) for p in table["partitions"]]


def boot_files(image, dest):
    """Copy the image's kernel, initramfs and cmdline.txt to dest; return (kernel, initrd, cmdline)."""
    os.makedirs(dest, exist_ok=True)
    (boot_off, _, _), (root_off, _, _) = partitions(image)[:2]
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    cmdline = subprocess.run(["mtype", "-i", "%s@@%d" % (image, boot_off), "::cmdline.txt"],
                             capture_output=True, text=True, check=True, env=env).stdout.strip()
    root = "%s?offset=%d" % (image, root_off)
    listing = subprocess.run(["debugfs", "-R", "ls -p /boot", root], capture_output=True,
                             text=True, check=True).stdout
    names = [f.split("/")[5] for f in listing.splitlines() if f.count("/") >= 6]
    kernels = sorted(n for n in names if n.startswith("vmlinuz-"))
    if not kernels:
        raise E2EError("%s: no /boot/vmlinuz-* in the rootfs" % image)
    version = kernels[-1][len("vmlinuz-"):]
    if "initrd.img-" + version not in names:
        raise E2EError("%s: no /boot/initrd.img-%s beside the kernel" % (image, version))
    files = []
    for name in ("vmlinuz-" + version, "initrd.img-" + version):
        out = os.path.join(dest, name)
        subprocess.run(["debugfs", "-R", "dump /boot/%s %s" % (name, out), root],
                       capture_output=True, check=True)
        if not os.path.getsize(out):
            raise E2EError("%s: could not read /boot/%s" % (image, name))
        files.append(out)
    return files[0], files[1], cmdline


# ------------------------------------------------------------------------------ acceleration
def probe_kvm(kernel, workdir):
    """True if KVM really runs this kernel: /dev/kvm can exist where guests cannot run (nested
    hosts without vmx/svm), so boot the kernel with no root and wait for its panic."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "no usable /dev/kvm"
    log = os.path.join(workdir, "kvm-probe.log")
    cmd = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults",
           "-display", "none", "-no-reboot", "-kernel", kernel,
           "-append", "console=ttyS0 panic=-1", "-serial", "file:" + log]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        err = done.stderr.strip()
    except subprocess.TimeoutExpired:
        err = "no panic within 30 s"
    text = open(log, errors="replace").read() if os.path.exists(log) else ""
    if "Kernel panic" in text:
        return True, "KVM ran the kernel to its panic"
    return False, "KVM did not run the kernel (%s)" % (err.splitlines()[-1] if err else "no output")


def free_udp_ports(n):
    """n UDP ports of 127.0.0.1 free right now (the kernel picks them; a tiny race is harmless)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class Link:
    """A point-to-point Ethernet link: two UDP ports on 127.0.0.1, one per end."""

    def __init__(self, name):
        self.name = name
        self.ports = free_udp_ports(2)

    def end(self, i):
        mine, peer = self.ports[i], self.ports[1 - i]
        return "socket,udp=127.0.0.1:%d,localaddr=127.0.0.1:%d" % (peer, mine)


# ------------------------------------------------------------------------------ the agent
class Agent:
    """The harness's end of the observer's virtio port: JSON lines both ways."""

    def __init__(self, path, name):
        self.name, self.path = name, path
        self.sock = None
        self.lock = threading.Condition()
        self.replies, self.hellos = {}, []
        self.next_id = 1

    def connect(self, deadline):
        while time.monotonic() < deadline:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(self.path)
                self.sock = s
                threading.Thread(target=self._reader, daemon=True).start()
                return
            except OSError:
                time.sleep(0.1)
        raise E2EError("%s: qemu's control socket %s never appeared" % (self.name, self.path))

    def _reader(self):
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                with self.lock:
                    if "hello" in msg:
                        self.hellos.append((time.monotonic(), msg["hello"]))
                    elif "id" in msg:
                        self.replies[msg["id"]] = msg
                    self.lock.notify_all()

    def wait_hello(self, timeout, not_boot=None):
        """Wait for the observer to start (in a boot other than not_boot); return its boot id."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                for _, boot in self.hellos:
                    if boot != not_boot:
                        return boot
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.lock.wait(left)

    def run(self, cmd, timeout=60):
        """Run cmd with bash in the guest; (rc, output). rc None if the guest did not answer."""
        with self.lock:
            rid = self.next_id
            self.next_id += 1
        self.sock.sendall((json.dumps({"id": rid, "cmd": cmd, "timeout": timeout}) + "\n").encode())
        deadline = time.monotonic() + timeout + 15
        with self.lock:
            while rid not in self.replies:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None, "(no answer from the observer within %d s)" % (timeout + 15)
                self.lock.wait(left)
            msg = self.replies.pop(rid)
        return msg["rc"], msg["out"]

    def send_only(self, cmd):
        """Send a command whose answer may never come (a reboot)."""
        with self.lock:
            rid = self.next_id
            self.next_id += 1
        self.sock.sendall((json.dumps({"id": rid, "cmd": cmd, "timeout": 30}) + "\n").encode())


# ------------------------------------------------------------------------------ the machine
class VM:
    def __init__(self, name, image, rundir, accel, nics, memory=512):
        """nics: [(link_end_spec, mac)], in the order the guest should number them."""
        self.name, self.image, self.rundir, self.accel = name, image, rundir, accel
        self.nics, self.memory = nics, memory
        self.serial = os.path.join(rundir, name + ".serial.log")
        self.proc = None
        self.started = None
        self.agent = None
        self.restarts = 0

    def command(self):
        kernel, initrd, cmdline = boot_files(self.image, os.path.join(self.rundir, self.name + "-boot"))
        self.cmdline = cmdline
        cmd = ["qemu-system-x86_64", "-name", self.name, "-nodefaults", "-no-user-config",
               "-display", "none", "-m", str(self.memory), "-smp", "1",
               "-kernel", kernel, "-initrd", initrd, "-append", cmdline,
               "-drive", "file=%s,format=raw,if=virtio,snapshot=on,cache=unsafe" % self.image,
               "-chardev", "file,id=con,path=" + self.serial, "-serial", "chardev:con",
               "-device", "virtio-serial-pci,id=vser",
               "-chardev", "socket,id=ctl,path=%s,server=on,wait=off" % self.ctl,
               "-device", "virtserialport,bus=vser.0,chardev=ctl,name=org.pibake.e2e"]
        cmd += ["-accel", "kvm", "-cpu", "host"] if self.accel == "kvm" else ["-accel", "tcg"]
        for i, (spec, mac) in enumerate(self.nics):
            cmd += ["-netdev", "%s,id=n%d" % (spec, i),
                    "-device", "virtio-net-pci,netdev=n%d,mac=%s,romfile=,addr=0x%x" % (i, mac, 4 + i)]
        return cmd

    def start(self):
        self.ctl = os.path.join(self.rundir, self.name + ".ctl")
        self.agent = Agent(self.ctl, self.name)
        cmd = self.command()
        env = dict(os.environ, TMPDIR=self.rundir)  # where qemu keeps the snapshot's changes
        self.started = time.monotonic()
        self.proc = subprocess.Popen(["nice", "-n", "5"] + cmd, stdin=subprocess.DEVNULL,
                                     stdout=open(os.path.join(self.rundir, self.name + ".qemu.log"), "w"),
                                     stderr=subprocess.STDOUT, env=env)
        self.agent.connect(time.monotonic() + 20)

    # An emulated CPU starved by a busy host can miss the kernel's early timer check; the kernel
    # then panics before it has read a byte of the image. That says nothing about the image, so
    # such a boot is started again (and the summary says so).
    TIMER_PANIC = "IO-APIC + timer doesn't work"
    MAX_RESTARTS = 2

    def early_timer_panic(self):
        try:
            with open(self.serial, errors="replace") as f:
                return self.TIMER_PANIC in f.read(200000)
        except OSError:
            return False

    def wait_up(self, timeout, not_boot=None):
        deadline = time.monotonic() + timeout
        while True:
            boot = self.agent.wait_hello(min(10, max(0, deadline - time.monotonic())), not_boot)
            if boot is not None or time.monotonic() >= deadline:
                break
            if not_boot is None and self.restarts < self.MAX_RESTARTS and self.early_timer_panic():
                self.restarts += 1
                self.stop()
                os.replace(self.serial, "%s.panic%d" % (self.serial, self.restarts))
                self.start()
        if boot is None:
            if self.proc.poll() is not None:
                raise E2EError("%s: qemu exited with %s (see %s.qemu.log)" % (self.name, self.proc.returncode, self.name))
            raise E2EError("%s: the observer did not start within %d s" % (self.name, timeout))
        return boot

    def run(self, cmd, timeout=60):
        return self.agent.run(cmd, timeout)

    def must(self, cmd, timeout=60):
        rc, out = self.run(cmd, timeout)
        if rc != 0:
            raise E2EError("%s: '%s' failed (rc %s): %s" % (self.name, cmd, rc, out.strip()[-300:]))
        return out

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, n=15):
        try:
            lines = open(self.serial, errors="replace").read().splitlines()
        except OSError:
            return ["(no serial log)"]
        return [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", l) for l in lines[-n:]]
