#!/usr/bin/env python3
"""pibake's boot test: a master baked by pibake boots, serves a worker, and keeps the world out.

    tests/e2e/run.py --pibake target/release/pibake --fixture bookworm=IMG [--fixture ...]

For each fixture it runs these scenarios, each on freshly booted VMs (see vm.py):

  modern           master = pibake build of the fixture (modern stack), worker, upstream.
                   PASS means, all of it: the worker's address is in the recipe's DHCP range;
                   the worker reaches the upstream's TCP service; the upstream sees it coming
                   from the master's uplink address (masquerade); the upstream, given a route to
                   the cluster subnet through the master, cannot reach a service on the worker;
                   SSH takes the recipe's key and refuses passwords; pibake-dnsmasq was up
                   within seconds of eth0 (not waiting for the uplink); after a reboot of the
                   master the rules and addresses are the same and the worker still gets out.
  dhcp-silent-uplink  master's uplink NIC present but nothing on it (no upstream): the worker
                   still gets its lease, and DHCP did not wait for the uplink (issue 15 item 4).
  dhcp-no-uplink   the master has no uplink NIC at all: same.
  cluster          `pibake cluster build` of a master and one worker (node01, reserved for the
                   worker VM's MAC at 192.168.5.101, outside the pool); both images booted, the
                   worker being pibake's too. PASS means: the worker has its reserved address
                   and host name; the master's DNS, asked directly, names node01 (how workers
                   find each other) and the worker's resolver resolves master.e2e.lan; the
                   master's user logs into node01 with the baked cluster key under
                   StrictHostKeyChecking=yes, while the same login with the baked known hosts
                   hidden is refused (so it is they that vouch for node01); egress as above.
  control-unconfigured  the fixture itself as master: must FAIL, at the lease. (The two
                   controls run on the first fixture only, unless asked for with --only.)
  control-no-nat-at-boot  pibake's master with nftables.service not enabled (an extra overlay
                   removes the link): must FAIL, at egress/masquerade and at ingress.

The harness never configures the master's eth0, DHCP, forwarding or NAT: on the master it only
reads (ip, nft, systemctl show, the observer's log) and, once, reboots it. The master's wlan0 is
a virtual Ethernet NIC standing in for Wi-Fi; its uplink address is leased by a DHCP server the
harness runs on the upstream (the Wi-Fi router's part), through the image's own DHCP client.

Prints one line per scenario and a closing "e2e: N passed, N failed" line; exits 1 if any
scenario failed, keeping that scenario's serial logs under the run directory and printing their
last lines.
"""
import argparse
import base64
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vm import VM, E2EError, Link, boot_files, probe_kvm  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

# The uplink side lives only inside the VMs: the upstream is the "router", the master's wlan0
# gets UPLINK_MASTER from it by DHCP. MACs: the master's uplink one is what the fixture's .link
# file names wlan0.
UPSTREAM_ADDR, UPLINK_MASTER, UPLINK_CIDR = "10.99.0.1", "10.99.0.2", "10.99.0.0/24"
MAC = {"master-lan": "52:54:00:e2:e0:11", "master-uplink": "52:54:00:e2:e0:12",
       "worker": "52:54:00:e2:e0:21", "upstream": "52:54:00:e2:e0:31"}
UPSTREAM_PORT, WORKER_PORT = 8080, 2222
# How long the observer may take to come up, and the worker to get a lease, after qemu starts.
# Emulated (TCG) boots of three VMs on two busy cores are slow; KVM is far quicker.
BOOT_TIMEOUT = {"kvm": 120, "tcg": 420}
LEASE_TIMEOUT = {"kvm": 90, "tcg": 240}
# A control fails at the lease; it waits this long before it may say so.
CONTROL_LEASE_TIMEOUT = {"kvm": 60, "tcg": 150}
# DHCP "does not wait for the uplink" when pibake-dnsmasq is active no later than this after
# eth0 got its address. NetworkManager-wait-online, which the bug waited for, takes 45 s or
# more when the uplink is silent.
DHCP_PROMPT_S = 15


def log(msg):
    print("e2e: " + msg, file=sys.stderr, flush=True)


class Check:
    """The outcome of one named check: ok, and a short detail for the summary line."""

    def __init__(self, name, ok, detail=""):
        self.name, self.ok, self.detail = name, ok, detail

    def __str__(self):
        text = self.name + ("=" + self.detail if self.detail and self.ok else "")
        return text if self.ok else "%s FAILED (%s)" % (self.name, self.detail)


def poll(fn, timeout, every=3):
    """fn() until it returns something true or timeout passes; the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(every)


def ipv4_of(vm, dev):
    """The interface's IPv4 address, not counting link-local ones: dhcpcd gives itself a
    169.254 address while it waits for a DHCP server, and goes on asking."""
    rc, out = vm.run("ip -4 -o addr show dev %s scope global" % dev, timeout=15)
    for addr in re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/\d+", out or "") if rc == 0 else []:
        if not addr.startswith("169.254."):
            return addr
    return None


def connect(vm, addr, port, timeout=6):
    """Open a TCP connection from vm with bash's /dev/tcp; the peer-echo reply or None."""
    rc, out = vm.run("timeout %d bash -c 'exec 3<>/dev/tcp/%s/%d && cat <&3'" % (timeout, addr, port),
                     timeout=timeout + 5)
    m = re.search(r"^peer (\S+)$", out or "", re.M) if rc == 0 else None
    return m.group(1) if m else None


# ------------------------------------------------------------------------------ the machines
class Cluster:
    """The three machines of one scenario, booted together; stopped by close()."""

    # The clusters of the scenario being run, so that its logs can be shown whatever failed.
    current = []

    def __init__(self, rundir, accel, master_img, fixture, upstream=True, uplink_nic=True,
                 worker_img=None):
        os.makedirs(rundir, exist_ok=True)
        Cluster.current.append(self)
        self.rundir, self.accel = rundir, accel
        self.lan, self.uplink = Link("cluster"), Link("uplink")
        nics = [(self.lan.end(0), MAC["master-lan"])]
        if uplink_nic:
            nics.append((self.uplink.end(0), MAC["master-uplink"]))
        self.master = VM("master", master_img, rundir, accel, nics)
        self.worker = VM("worker", worker_img or fixture, rundir, accel,
                         [(self.lan.end(1), MAC["worker"])])
        self.upstream = VM("upstream", fixture, rundir, accel,
                           [(self.uplink.end(1), MAC["upstream"])]) if upstream else None
        self.vms = [v for v in (self.upstream, self.master, self.worker) if v]
        self.up_after = {}

    def boot(self):
        # The upstream first: it stands for a router that is already there when the master boots.
        for vm in self.vms:
            vm.start()
        for vm in self.vms:
            vm.boot = vm.wait_up(BOOT_TIMEOUT[self.accel])
            self.up_after[vm.name] = time.monotonic() - vm.started
            if vm is self.upstream:
                self.setup_upstream()
        log("  booted: " + ", ".join("%s %.0f s" % kv for kv in self.up_after.items()))
        for vm in self.vms:
            if vm.restarts:
                log("  %s: restarted %d time(s) after the emulated CPU missed the kernel's early "
                    "timer check (host too busy), before the image was read" % (vm.name, vm.restarts))

    def setup_upstream(self):
        """The router and the internet in one harness-owned host: a static address, a DHCP
        server that leases the master's uplink NIC UPLINK_MASTER, and a TCP service."""
        u = self.upstream
        u.must("systemctl stop NetworkManager.service dhcpcd.service 2>/dev/null; "
               "ip addr flush dev eth0; ip link set eth0 up; ip addr add %s/24 dev eth0" % UPSTREAM_ADDR)
        u.must("nohup dnsmasq --keep-in-foreground --port=0 --interface=eth0 --bind-interfaces "
               "--dhcp-range=%s,%s,255.255.255.0,1h --dhcp-host=%s,%s --dhcp-authoritative "
               "--dhcp-leasefile=/run/pibake-e2e/uplink.leases --log-dhcp "
               "--log-facility=/run/pibake-e2e/dnsmasq.log >/dev/null 2>&1 &"
               % (UPLINK_MASTER, UPLINK_MASTER, MAC["master-uplink"], UPLINK_MASTER))
        u.must("nohup python3 /usr/local/lib/pibake-e2e/peer-echo.py %d /run/pibake-e2e/peers.log "
               ">/dev/null 2>&1 &" % UPSTREAM_PORT)

    def close(self):
        for vm in self.vms:
            vm.stop()


# ------------------------------------------------------------------------------ the checks
def check_lease(c, lan_range, timeout):
    addr = poll(lambda: ipv4_of(c.worker, "eth0"), timeout)
    if not addr:
        return Check("lease", False, "the worker's eth0 has no IPv4 address %d s after it booted" % timeout)
    lo, hi = (ipaddress.ip_address(a) for a in lan_range)
    if not lo <= ipaddress.ip_address(addr) <= hi:
        return Check("lease", False, "%s is outside the recipe's range %s-%s" % (addr, lo, hi))
    return Check("lease", True, addr)


def check_egress(c):
    """The worker reaches the upstream's service; the upstream must see the master's address."""
    master_up = poll(lambda: ipv4_of(c.master, "wlan0"), 120)
    if not master_up:
        return [Check("egress", False, "the master's wlan0 got no address from the upstream's DHCP")]
    seen = poll(lambda: connect(c.worker, UPSTREAM_ADDR, UPSTREAM_PORT), 30, every=2)
    if not seen:
        return [Check("egress", False, "the worker cannot open %s:%d" % (UPSTREAM_ADDR, UPSTREAM_PORT)),
                Check("masquerade", False, "no connection reached the upstream")]
    masq = Check("masquerade", seen == master_up, seen if seen == master_up else
                 "the upstream saw %s, not the master's uplink address %s" % (seen, master_up))
    return [Check("egress", True), masq]


def check_ingress_blocked(c, worker_addr):
    """Nothing gets in: the upstream, routing the cluster subnet through the master, cannot reach
    a service on the worker that the master itself can reach (so the service is really there)."""
    c.worker.must("nohup python3 /usr/local/lib/pibake-e2e/peer-echo.py %d /run/pibake-e2e/peers.log "
                  ">/dev/null 2>&1 &" % WORKER_PORT)
    if not poll(lambda: connect(c.master, worker_addr, WORKER_PORT), 20, every=2):
        return Check("ingress-blocked", False, "inconclusive: the worker's service is not reachable "
                     "even from the master")
    c.upstream.must("ip route replace 192.168.5.0/24 via %s" % UPLINK_MASTER)
    got_in = connect(c.upstream, worker_addr, WORKER_PORT, timeout=8)
    if got_in:
        return Check("ingress-blocked", False, "the upstream reached %s:%d (seen as %s)"
                     % (worker_addr, WORKER_PORT, got_in))
    return Check("ingress-blocked", True)


def check_ssh(c, key_file, lan_addr, user):
    """Log in from the worker with the recipe's key; a password login must not even be offered."""
    key = base64.b64encode(open(key_file, "rb").read()).decode()
    c.worker.must("echo %s | base64 -d >/run/pibake-e2e/id && chmod 600 /run/pibake-e2e/id" % key)
    opts = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=15 -o BatchMode=yes"
    rc, out = c.worker.run("ssh %s -i /run/pibake-e2e/id %s@%s 'echo logged-in-as-$(id -un)@$(hostname)'"
                           % (opts, user, lan_addr), timeout=60)
    key_ok = Check("ssh-key", rc == 0 and "logged-in-as-%s@" % user in out,
                   "" if rc == 0 else "login with the recipe's key failed: " + out.strip()[-200:])
    rc, out = c.worker.run("ssh %s -o PubkeyAuthentication=no -o PreferredAuthentications=password,"
                           "keyboard-interactive %s@%s true" % (opts, user, lan_addr), timeout=60)
    methods = re.search(r"Permission denied \(([^)]*)\)", out or "")
    refused = rc != 0 and methods and "password" not in methods.group(1) \
        and "keyboard-interactive" not in methods.group(1)
    no_pw = Check("ssh-no-password", bool(refused),
                  "" if refused else "the server answered: " + (out or "").strip()[-200:])
    return [key_ok, no_pw]


def dhcp_timeline(master):
    """When eth0 got its address, when pibake-dnsmasq became active, and when the system was
    online (monotonic seconds of the master's boot); from the observer's log and systemd."""
    rc, events = master.run("cat /run/pibake-e2e/events.log", timeout=15)
    seen = []
    for line in (events or "").splitlines():
        m = re.match(r"pibake-e2e \[\s*([\d.]+)\] (.*)", line)
        if m and re.search(r"(addr\+ eth0 |eth0\s+inet )192\.168\.5\.1/", m.group(2)):
            seen.append(float(m.group(1)))
            break
    # The observer may start after eth0 is configured (it then reports the address at its own
    # start, too late); the network manager's journal has the earlier, true time.
    rc, journal = master.run("journalctl -b -o short-monotonic --no-pager -g "
                             "'eth0.*(Activation: successful|using static address)'", timeout=30)
    m = re.search(r"^\[\s*([\d.]+)\]", journal or "", re.M) if rc == 0 else None
    if m:
        seen.append(float(m.group(1)))
    t_eth0 = min(seen) if seen else None
    times = {}
    for unit in ("pibake-dnsmasq.service", "NetworkManager-wait-online.service", "network-online.target"):
        rc, out = master.run("systemctl show -p ActiveEnterTimestampMonotonic --value " + unit, timeout=15)
        us = int(out.strip()) if rc == 0 and out.strip().isdigit() else 0
        times[unit] = us / 1e6 if us else None
    return t_eth0, times


def check_dhcp_prompt(c):
    t_eth0, t = dhcp_timeline(c.master)
    t_dns, t_online = t["pibake-dnsmasq.service"], t["network-online.target"]
    if t_eth0 is None:
        return Check("dhcp-prompt", False, "the observer never saw eth0 get 192.168.5.1")
    if t_dns is None:
        return Check("dhcp-prompt", False, "pibake-dnsmasq.service never became active")
    late = t_dns - t_eth0
    story = "dnsmasq %+.0f s after eth0%s" % (
        late, ", network-online at %.0f s" % t_online if t_online else "")
    return Check("dhcp-prompt", late <= DHCP_PROMPT_S, story if late <= DHCP_PROMPT_S else
                 "pibake-dnsmasq became active %.0f s after eth0 had its address (network-online at %s): "
                 "it waited for the uplink" % (late, "%.0f s" % t_online if t_online else "never"))


def master_state(master):
    """What must survive a reboot: the ruleset, the addresses, forwarding."""
    parts = []
    for cmd in ("nft list ruleset", "ip -4 -o addr show dev eth0 | awk '{print $2, $4}'",
                "ip -4 -o addr show dev wlan0 | awk '{print $2, $4}'", "sysctl -n net.ipv4.ip_forward"):
        rc, out = master.run(cmd, timeout=20)
        parts.append(out.strip() if rc == 0 else "(%s failed)" % cmd)
    return parts


def check_reboot(c, timeout):
    before = master_state(c.master)
    if not before[0]:
        return [Check("reboot-same", False, "no nftables ruleset before the reboot")]
    c.master.agent.send_only("systemctl reboot")
    try:
        c.master.boot = c.master.wait_up(timeout, not_boot=c.master.boot)
    except E2EError as e:
        return [Check("reboot-same", False, str(e))]
    # The state is what the boot settles to: wait for both addresses before comparing.
    poll(lambda: ipv4_of(c.master, "eth0") and ipv4_of(c.master, "wlan0"), 120)
    after = master_state(c.master)
    names = ("ruleset", "eth0", "wlan0", "ip_forward")
    diff = [n for n, a, b in zip(names, before, after) if a != b]
    same = Check("reboot-same", not diff, "" if not diff else "changed across the reboot: " + ", ".join(
        "%s %r -> %r" % (n, before[names.index(n)][:80], after[names.index(n)][:80]) for n in diff))
    again = poll(lambda: connect(c.worker, UPSTREAM_ADDR, UPSTREAM_PORT), 60, every=3)
    return [same, Check("egress-after-reboot", bool(again), "" if again else
                        "the worker cannot reach the upstream after the master rebooted")]


# ------------------------------------------------------------------------------ scenarios
class Env:
    def __init__(self, args, rundir, accel):
        self.args, self.rundir, self.accel = args, rundir, accel
        self.key = os.path.join(rundir, "id_e2e")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pibake-e2e", "-f", self.key],
                       check=True)
        self.recipe_path = os.path.join(rundir, "recipe.toml")
        text = open(os.path.join(HERE, "recipe.toml")).read().replace(
            "@SSH_KEY@", open(self.key + ".pub").read().strip())
        open(self.recipe_path, "w").write(text)
        self.recipe = tomllib.loads(text)

    def bake(self, fixture, out, overlays=()):
        cmd = [self.args.pibake, "build", self.recipe_path, "--base", fixture, "--stack", "modern", "-o", out]
        for o in overlays:
            cmd += ["--overlay", o]
        env = dict(os.environ, PIBAKE_CACHE_DIR=os.path.join(self.args.workdir, "pibake-cache"))
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise E2EError("pibake build failed: " + (done.stderr.strip() or done.stdout.strip())[-400:])
        return out


def scenario_modern(env, shape, fixture, d):
    net = env.recipe["network"]
    master = env.bake(fixture, os.path.join(d, "master.img"))
    c = Cluster(d, env.accel, master, fixture)
    try:
        c.boot()
        checks = [check_lease(c, net["dhcp_range"], LEASE_TIMEOUT[env.accel])]
        if checks[0].ok:
            checks += check_egress(c)
            checks.append(check_ingress_blocked(c, checks[0].detail))
            checks += check_ssh(c, env.key, net["address"].split("/")[0], env.recipe["user"]["name"])
            checks.append(check_dhcp_prompt(c))
            checks += check_reboot(c, BOOT_TIMEOUT[env.accel])
        return c, checks
    except BaseException:
        c.close()
        raise


def scenario_dhcp(uplink_nic):
    def run(env, shape, fixture, d):
        master = env.bake(fixture, os.path.join(d, "master.img"))
        c = Cluster(d, env.accel, master, fixture, upstream=False, uplink_nic=uplink_nic)
        try:
            c.boot()
            checks = [check_lease(c, env.recipe["network"]["dhcp_range"], LEASE_TIMEOUT[env.accel]),
                      check_dhcp_prompt(c)]
            return c, checks
        except BaseException:
            c.close()
            raise
    return run


def scenario_unconfigured(env, shape, fixture, d):
    # No upstream: the first check (the lease) is where an unconfigured master must fail.
    c = Cluster(d, env.accel, fixture, fixture, upstream=False)
    try:
        c.boot()
        return c, [check_lease(c, env.recipe["network"]["dhcp_range"], CONTROL_LEASE_TIMEOUT[env.accel])]
    except BaseException:
        c.close()
        raise


def scenario_no_nat(env, shape, fixture, d):
    master = env.bake(fixture, os.path.join(d, "master.img"),
                      overlays=[os.path.join(HERE, "controls", "no-nat-at-boot")])
    c = Cluster(d, env.accel, master, fixture)
    try:
        c.boot()
        checks = [check_lease(c, env.recipe["network"]["dhcp_range"], LEASE_TIMEOUT[env.accel])]
        if checks[0].ok:
            checks += check_egress(c)
            checks.append(check_ingress_blocked(c, checks[0].detail))
        return c, checks
    except BaseException:
        c.close()
        raise


# The cluster scenario's worker, reserved by the MAC the harness gives the worker VM.
NODE01, NODE01_ADDR, DOMAIN = "node01", "192.168.5.101", "e2e.lan"


def cluster_inventory(env, fixture):
    r = env.recipe
    q = lambda v: '"%s"' % v  # noqa: E731 (TOML basic strings; the values hold no quotes)
    lines = ['[cluster]', 'name = "e2e"', 'domain = %s' % q(DOMAIN), 'base = %s' % q(fixture), '',
             '[defaults.user]', 'name = %s' % q(r["user"]["name"]),
             'password = %s' % q(r["user"]["password"]),
             'ssh_authorized_keys = [%s]' % q(r["user"]["ssh_authorized_keys"][0]), '',
             '[defaults.ssh]', 'enabled = true', 'password_authentication = false', '',
             '[defaults.build]', 'epoch = %d' % r["build"]["epoch"], '',
             '[master]', 'hostname = "master"', '', '[master.network]']
    for k, v in r["network"].items():
        lines.append("%s = %s" % (k, "[%s]" % ", ".join(map(q, v)) if isinstance(v, list) else q(v)))
    lines += ['', '[master.wifi]'] + ["%s = %s" % (k, q(v)) for k, v in r["wifi"].items()]
    lines += ['', '[[worker]]', 'hostname = %s' % q(NODE01), 'mac = %s' % q(MAC["worker"]),
              'address = %s' % q(NODE01_ADDR), '']
    return "\n".join(lines)


def dns_query(vm, server, name):
    """The A records `server` gives for `name`, asked with a hand-made UDP query from vm (the
    fixtures have no dig), or None when it does not answer."""
    script = r"""
import socket, struct, sys
name, server = sys.argv[1], sys.argv[2]
q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00\x00\x01\x00\x01"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(q, (server, 53)); r = s.recv(512)
i = 12
while r[i]: i += r[i] + 1
i += 5
for _ in range(struct.unpack(">H", r[6:8])[0]):
    i += 2 if r[i] & 0xc0 == 0xc0 else 0
    t, _, _, n = struct.unpack(">HHIH", r[i:i + 10]); i += 10
    if t == 1 and n == 4: print("A", socket.inet_ntoa(r[i:i + 4]))
    i += n
"""
    b64 = base64.b64encode(script.encode()).decode()
    rc, out = vm.run("echo %s | base64 -d > /run/pibake-e2e/dnsq.py && python3 /run/pibake-e2e/dnsq.py %s %s"
                     % (b64, name, server), timeout=20)
    return re.findall(r"^A (\S+)$", out or "", re.M) if rc == 0 else None


def check_cluster(c, user):
    checks = []
    addr = poll(lambda: (ipv4_of(c.worker, "eth0") == NODE01_ADDR) or None, LEASE_TIMEOUT[c.accel])
    got = ipv4_of(c.worker, "eth0")
    checks.append(Check("reserved-lease", bool(addr), got if addr else
                        "the worker has %s, not its reservation %s" % (got, NODE01_ADDR)))
    rc, out = c.worker.run("hostname", timeout=15)
    name = (out or "").strip()
    checks.append(Check("hostname", rc == 0 and name == NODE01, "" if name == NODE01 else
                        "the worker calls itself %r" % name))
    master_addr = c.master_lan_addr
    answer = poll(lambda: dns_query(c.worker, master_addr, "%s.%s" % (NODE01, DOMAIN)) or None, 60, every=5)
    checks.append(Check("dns-from-master", answer == [NODE01_ADDR], "" if answer == [NODE01_ADDR] else
                        "the master's DNS gave %r for %s.%s" % (answer, NODE01, DOMAIN)))
    rc, out = c.worker.run("getent hosts master.%s" % DOMAIN, timeout=20)
    resolved = rc == 0 and (out or "").split()[:1] == [master_addr]
    checks.append(Check("resolves-master", resolved, "" if resolved else
                        "getent hosts master.%s on the worker: %r" % (DOMAIN, (out or "").strip())))
    ssh = ("runuser -u %s -- ssh -o BatchMode=yes -o ConnectTimeout=20 -o StrictHostKeyChecking=yes %%s %s "
           "'echo in-$(hostname)-as-$(id -un)'" % (user, NODE01))
    ok = None
    for _ in range(6):  # the worker's sshd may still be starting
        rc, out = c.master.run(ssh % "", timeout=60)
        ok = rc == 0 and ("in-%s-as-%s" % (NODE01, user)) in (out or "")
        if ok:
            break
        time.sleep(10)
    checks.append(Check("ssh-from-master", ok, "" if ok else
                        "ssh %s from the master: %s" % (NODE01, (out or "").strip()[-200:])))
    rc, out = c.master.run(ssh % "-o UserKnownHostsFile=/dev/null -o GlobalKnownHostsFile=/dev/null",
                           timeout=60)
    vouched = rc != 0 and "Host key verification failed" in (out or "")
    checks.append(Check("known-hosts-vouch", vouched, "" if vouched else
                        "without the baked known hosts the login gave rc %s: %s" % (rc, (out or "").strip()[-200:])))
    return checks


def scenario_cluster(env, shape, fixture, d):
    inv = os.path.join(d, "e2e.toml")
    open(inv, "w").write(cluster_inventory(env, fixture))
    images = os.path.join(d, "images")
    cmd = [env.args.pibake, "cluster", "build", inv, "-o", images, "--format", "img", "--stack", "modern"]
    envv = dict(os.environ, PIBAKE_CACHE_DIR=os.path.join(env.args.workdir, "pibake-cache"))
    done = subprocess.run(cmd, capture_output=True, text=True, env=envv)
    if done.returncode != 0:
        raise E2EError("pibake cluster build failed: " + (done.stderr.strip() or done.stdout.strip())[-400:])
    c = Cluster(d, env.accel, os.path.join(images, "master.img"), fixture,
                worker_img=os.path.join(images, NODE01 + ".img"))
    c.master_lan_addr = env.recipe["network"]["address"].split("/")[0]
    try:
        c.boot()
        checks = check_cluster(c, env.recipe["user"]["name"])
        if checks[0].ok:
            checks += check_egress(c)
        return c, checks
    except BaseException:
        c.close()
        raise


# name -> (function, the checks that must fail; None = every check must pass)
SCENARIOS = {
    "modern": (scenario_modern, None),
    "dhcp-silent-uplink": (scenario_dhcp(uplink_nic=True), None),
    "dhcp-no-uplink": (scenario_dhcp(uplink_nic=False), None),
    "cluster": (scenario_cluster, None),
    "control-unconfigured": (scenario_unconfigured, {"lease"}),
    # Without the rules the worker's packets leave unmasqueraded (so the upstream cannot answer
    # them) and nothing stops the upstream's connection coming in.
    "control-no-nat-at-boot": (scenario_no_nat, {"egress|masquerade", "ingress-blocked"}),
}


def judge(checks, must_fail):
    """(passed, text). A control passes when each expected failure (a|b: either) happened and
    every other check passed, so it fails for the right reason."""
    failed = {ch.name for ch in checks if not ch.ok}
    if must_fail is None:
        return not failed, " ".join(str(ch) for ch in checks)
    missing = [alt for alt in must_fail if not failed & set(alt.split("|"))]
    expected = {n for alt in must_fail for n in alt.split("|")}
    unexpected = failed - expected
    reasons = "; ".join("%s: %s" % (ch.name, ch.detail) for ch in checks if not ch.ok)
    if missing or unexpected:
        why = []
        if missing:
            why.append("did not fail at " + ", ".join(missing))
        if unexpected:
            why.append("also failed at " + ", ".join(sorted(unexpected)))
        return False, "a negative control that %s: %s" % (" and ".join(why), " ".join(str(c) for c in checks))
    return True, "failed as it must (%s)" % reasons


def run_scenario(env, shape, fixture, name):
    fn, must_fail = SCENARIOS[name]
    d = os.path.join(env.rundir, "%s-%s" % (shape, name))
    os.makedirs(d, exist_ok=True)
    t0 = time.monotonic()
    log("%s %s: starting" % (shape, name))
    Cluster.current.clear()
    try:
        _, checks = fn(env, shape, fixture, d)
        ok, text = judge(checks, must_fail)
    except E2EError as e:
        ok, text = False, "harness error: %s" % e
    finally:
        for c in Cluster.current:
            c.close()
    cluster = Cluster.current[-1] if Cluster.current else None
    boots = ", ".join("%s %.0f s" % kv for kv in cluster.up_after.items()) if cluster else ""
    line = "%-9s %-23s %s  %s  [%s; %.0f s]" % (shape, name, "PASS" if ok else "FAIL", text,
                                                boots or "no boot", time.monotonic() - t0)
    print("e2e: " + line, flush=True)
    if not ok:
        log("%s %s: logs kept in %s" % (shape, name, d))
        for vm in (cluster.vms if cluster else []):
            log("---- last lines of %s's serial console (%s)" % (vm.name, vm.serial))
            for l in vm.tail():
                print("    " + l, file=sys.stderr)
    elif not env.args.keep:
        shutil.rmtree(d, ignore_errors=True)
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pibake", required=True)
    ap.add_argument("--fixture", action="append", required=True, metavar="SHAPE=IMAGE")
    ap.add_argument("--workdir", default="target/e2e")
    ap.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run only these scenarios")
    ap.add_argument("--accel", choices=["auto", "kvm", "tcg"], default=os.environ.get("E2E_ACCEL", "auto"))
    ap.add_argument("--keep", action="store_true", help="keep the logs of passing scenarios too")
    args = ap.parse_args()
    args.pibake = os.path.abspath(args.pibake)
    args.workdir = os.path.abspath(args.workdir)
    for tool in ("qemu-system-x86_64", "debugfs", "mtype", "sfdisk", "ssh-keygen"):
        if not shutil.which(tool) and not os.path.exists("/usr/sbin/" + tool) and not os.path.exists("/sbin/" + tool):
            sys.exit("e2e: missing %s (run make deps)" % tool)

    rundir = os.path.join(args.workdir, "runs", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(rundir)
    last = os.path.join(args.workdir, "runs", "last")
    if os.path.islink(last):
        os.remove(last)
    os.symlink(os.path.basename(rundir), last)

    fixtures = [f.split("=", 1) for f in args.fixture]
    accel, why = args.accel, "asked for"
    if accel == "auto":
        kernel = boot_files(fixtures[0][1], os.path.join(rundir, "probe"))[0]
        ok, why = probe_kvm(kernel, rundir)
        accel = "kvm" if ok else "tcg"
    log("accelerator: %s (%s)" % (accel, why))
    log("the master's wlan0 is an Ethernet NIC standing in for Wi-Fi: its uplink address %s comes "
        "from a DHCP server the harness runs on the upstream" % UPLINK_MASTER)
    env = Env(args, rundir, accel)

    results = []
    t0 = time.monotonic()
    for i, (shape, image) in enumerate(fixtures):
        for name in SCENARIOS:
            if args.only and name not in args.only:
                continue
            # A control proves the checks can fail; once is enough, and boots are dear.
            if name.startswith("control-") and i > 0 and not args.only:
                continue
            results.append(run_scenario(env, shape, os.path.abspath(image), name))
    passed = sum(results)
    log("classic stack: not run (no fixture has the dnsmasq package and iptables, as on real Lite images)")
    log("whole run %.0f s (%s), logs of failures under %s" % (time.monotonic() - t0, accel, rundir))
    print("e2e: %d passed, %d failed" % (passed, len(results) - passed), flush=True)
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
