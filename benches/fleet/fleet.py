#!/usr/bin/env python3
"""Fleet benchmark: wgprov against the SSH floor, pyinfra and Ansible on the same lab hosts.

Run through benches/fleet/run.sh (it installs the tools and builds wgprov). For each N it builds
a lab of N nodes over 5 sites with `wgprov lab up`, then from the lab's controller measures, each
figure the median of RUNS runs after a warm-up:

  floor        N parallel `ssh -o ControlMaster=no -o KexAlgorithms=curve25519-sha256 host true`
               (and with OpenSSH's default key exchange)
  wgprov       first apply (from an empty network), no-change apply, apply --check --diff
               (on the empty network, so that every diff is computed and printed)
  pyinfra      first run and no-change run (parallel = N)
  ansible      first run and no-change run (forks = N, pipelining, interpreter pinned, no facts)

pyinfra and Ansible write the files `wgprov render` produced, so every tool writes identical
bytes, and run the same handlers (wg-quick down/up when wg0.conf changed, sysctl -p).

Controller CPU and peak memory come from GNU time around the tool (peak = largest process);
target CPU is the growth of utime+stime+cutime+cstime of every node's sshd (pid 1 of the node's
PID namespace, which reaps all its sessions). The lab is torn down at the end, on error and on
SIGINT/SIGTERM.
"""

import json
import os
import re
import platform
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
WGPROV = str(ROOT / "target" / "release" / "wgprov")
VENV = HERE / ".venv" / "bin"
RUNS = int(os.environ.get("FLEET_RUNS", "5"))
# FLEET_ONLY=wgprov measures the floor and wgprov only (quick before/after checks; RESULTS.md
# is not written then)
ONLY = os.environ.get("FLEET_ONLY", "")
# above this many hosts, pyinfra and Ansible are left out (wgprov and the floor only)
TOOLS_UP_TO = int(os.environ.get("FLEET_TOOLS_UP_TO", "200"))
SITES = 5
CLK = os.sysconf("SC_CLK_TCK")

live_labs = []


def sh(cmd, check=True, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{cmd[:6]}... exited {r.returncode}: {r.stderr.strip()[-2000:]}")
    return r


def teardown(*_):
    while live_labs:
        p = live_labs.pop()
        subprocess.run([WGPROV, "lab", "down", "--prefix", p], capture_output=True)
    if _:
        sys.exit(130)


signal.signal(signal.SIGINT, teardown)
signal.signal(signal.SIGTERM, teardown)


def inventory(n):
    per = [n // SITES + (1 if i < n % SITES else 0) for i in range(SITES)]
    y = ["network:", "  wireguard_cidr: 10.100.0.0/16", "  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/16]", "sites:"]
    nodes = []
    for s in range(SITES):
        if per[s] == 0:
            continue
        y += [f"  site{s}:", f"    lan_cidrs: [192.168.{10 + s}.0/24]", f"    endpoint: 203.0.113.{10 + s}:51820",
              f"    next_hop: s{s}n0", "    router: openwrt", "    nodes:"]
        for i in range(per[s]):
            addr = f"192.168.{10 + s}.{10 + i}"
            y += [f"      s{s}n{i}:", f"        address: {addr}"]
            nodes.append((f"s{s}n{i}", addr, i == 0))
    return "\n".join(y) + "\n", nodes


class Lab:
    def __init__(self, n, work):
        self.n = n
        self.prefix = f"fleet{n}"
        self.work = work
        self.inv = work / "inv.yaml"
        text, self.nodes = inventory(n)
        self.inv.write_text(text)
        subprocess.run([WGPROV, "lab", "down", "--prefix", self.prefix], capture_output=True)
        live_labs.append(self.prefix)
        sh([WGPROV, "lab", "up", "-i", str(self.inv), "--prefix", self.prefix])
        self.state = json.loads(Path(f"/tmp/wgprov-lab/{self.prefix}/state.json").read_text())

    def exec(self, name, cmd, check=True):
        return sh([WGPROV, "lab", "exec", "--prefix", self.prefix, name, "--"] + cmd, check=check)

    def reset(self):
        """Back to an empty network: no interface, none of the managed files, no backups.

        The files are moved aside, not deleted: every lab node's /etc and /var/lib are overlays
        on one ext4, and ext4 makes each new inode skip every inode freed in the last minute or
        so (`recently_deleted`). Deleting 50 nodes' files before each run made the next run's
        file creations scan past thousands of them, which a fresh host never does (perf: most
        of the target CPU above the hand floor was ext4's inode search). `lab down` removes the
        moved files with the lab."""
        script = ("wg-quick down wg0 >/dev/null 2>&1; n=$(date +%s%N); mkdir -p /etc/.bench-trash /var/lib/.bench-trash; "
                  "for f in /etc/wireguard/wg0.conf /etc/default/kubelet /etc/sysctl.d/99-wgprov.conf /etc/wgprov; do "
                  "[ -e $f ] && mv $f /etc/.bench-trash/$n$(echo $f | tr / _); done; "
                  "[ -e /var/lib/wgprov ] && mv /var/lib/wgprov /var/lib/.bench-trash/$n; true")
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda nd: self.exec(nd[0], ["sh", "-c", script]), self.nodes))

    def target_cpu(self):
        """CPU seconds used so far by every process in the nodes' namespaces: live processes'
        own time plus what they reaped (sessions that ended, daemons that exited)."""
        inodes = {os.stat(f"/run/netns/{ns}").st_ino for ns in self.state["nodes"].values()}
        total = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                if os.stat(f"/proc/{pid}/ns/net").st_ino not in inodes:
                    continue
                f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # after the comm: state is [0]; utime [11], stime [12], cutime [13], cstime [14]
            total += sum(int(x) for x in f[11:15])
        return total / CLK

    def timed(self, cmd):
        """Runs cmd in the controller under GNU time: (wall s, controller cpu s, peak MiB, target cpu s)."""
        out = self.work / "time.out"
        t0 = self.target_cpu()
        start = time.monotonic()
        r = self.exec("controller", ["/usr/bin/time", "-f", "%e %U %S %M", "-o", str(out)] + cmd, check=False)
        wall = time.monotonic() - start
        t1 = self.target_cpu()
        self.last_out = r.stdout
        if r.returncode != 0:
            why = [l for l in (r.stdout + r.stderr).splitlines() if "GUARD" in l or "error" in l.lower()]
            raise RuntimeError(f"{' '.join(cmd[:4])} exited {r.returncode}: {why[:20]} {(r.stdout + r.stderr)[-1500:]}")
        e, u, s_, m = out.read_text().split()[-4:]
        return wall, float(u) + float(s_), int(m) / 1024, t1 - t0

    def down(self):
        sh([WGPROV, "lab", "down", "--prefix", self.prefix])
        live_labs.remove(self.prefix)


# the rows the ratios and the phase table refer to
FLOOR = "floor (ssh true, curve25519)"
HAND = "hand floor (ssh + script: same files, wg-quick up)"
NO_GUARD = "wgprov first apply (--no-guard)"
GUARDED = "wgprov first apply"
CHECK = "wgprov apply --check (connect + facts)"

NOTES = {}
# per N: the guarded first apply's (wall, gate) of each run, and the paired ratios of the
# --no-guard first apply to the hand floor
GATES = {}
PAIRS = {}


def median_of(fn, before=None):
    """A warm-up, then RUNS runs; the median of each figure."""
    samples = []
    for i in range(RUNS + 1):
        if before:
            before()
        r = fn()
        if i > 0:
            samples.append(r)
    m = tuple(statistics.median(x[k] for x in samples) for k in range(4))
    print(f"    median wall {m[0]:.3f} s  controller CPU {m[1]:.2f} s  peak {m[2]:.0f} MiB  target CPU {m[3]:.2f} s", flush=True)
    return m


def paired(fa, fb, before):
    """fa and fb alternately, each after `before` (a warm-up pair, then RUNS pairs), so that a
    drift in the machine's load touches both alike: the median figures of each, and the medians
    of the per-pair ratios b/a of wall time and of target CPU."""
    sa, sb = [], []
    for i in range(RUNS + 1):
        before()
        a = fa()
        before()
        b = fb()
        if i > 0:
            sa.append(a)
            sb.append(b)
    med = lambda xs: tuple(statistics.median(x[k] for x in xs) for k in range(4))
    ratio = (statistics.median(b[0] / a[0] for a, b in zip(sa, sb)),
             statistics.median(b[3] / a[3] for a, b in zip(sa, sb) if a[3] > 0))
    for name, m in (("a", med(sa)), ("b", med(sb))):
        print(f"    {name}: median wall {m[0]:.3f} s  controller CPU {m[1]:.2f} s  peak {m[2]:.0f} MiB  target CPU {m[3]:.2f} s", flush=True)
    print(f"    pairs: wall ratio {ratio[0]:.2f}  target CPU ratio {ratio[1]:.2f}", flush=True)
    return med(sa), med(sb), ratio


def guarded_first(lab, cmd):
    """A guarded first apply that also records, per run, how long its gate waited (the probes
    that wait for every new link's first handshake; `gate N s` in the guard's verdict)."""
    gates = []

    def run():
        r = lab.timed(cmd)
        m = re.search(r"gate ([0-9.]+) s", lab.last_out)
        gates.append((r[0], float(m.group(1)) if m else 0.0))
        return r
    return run, gates


def ssh_floor(lab, kex):
    opts = "-o BatchMode=yes -o ControlMaster=no" + (f" -o KexAlgorithms={kex}" if kex else "")
    hosts = " ".join(addr for _, addr, _ in lab.nodes)
    script = f"for h in {hosts}; do ssh {opts} root@$h true & done; wait"
    return lambda: lab.timed(["bash", "-c", script])


def hand_floor(lab, render):
    """The same target work done by hand, as directly as it can be done: one SSH session per host,
    all at once, each running a plain script that writes the files wgprov writes in the lab (the
    bytes `wgprov render` produced; the same list pyinfra and Ansible write) and brings wg0 up
    with the same commands (sysctl -p on next-hops, wg-quick up)."""
    import base64
    hand = lab.work / "hand"
    hand.mkdir(exist_ok=True)
    files = [("etc/wireguard/wg0.conf", "600"), ("etc/default/kubelet", "644")]
    nh_files = [("etc/wgprov/port-forward.md", "644"), ("etc/sysctl.d/99-wgprov.conf", "644")]
    for name, _, nh in lab.nodes:
        lines = ["set -e"]
        for rel, mode in files + (nh_files if nh else []):
            data = base64.b64encode((render / name / rel).read_bytes()).decode()
            lines += [f"mkdir -p /{os.path.dirname(rel)}",
                      f"echo {data} | base64 -d > /{rel}", f"chmod {mode} /{rel}"]
        if nh:
            lines.append("sysctl -q -p /etc/sysctl.d/99-wgprov.conf")
        lines.append("wg-quick up wg0 >/dev/null 2>&1")
        (hand / f"{name}.sh").write_text("\n".join(lines) + "\n")
    opts = "-o BatchMode=yes -o ControlMaster=no -o KexAlgorithms=curve25519-sha256"
    runs = " ".join(f"ssh {opts} root@{addr} sh -s < {hand / name}.sh &" for name, addr, _ in lab.nodes)
    return lambda: lab.timed(["bash", "-c", f"{runs} wait"])


def removal(lab, inv, forks):
    """Taking 10% of the nodes out (members, `state: absent`), guarded, from a network a
    --no-guard first apply made; the full network is made again before each run (untimed)."""
    base = lab.inv.read_text()
    members = [name for name, _, nh in lab.nodes if not nh][: max(1, lab.n // 10)]
    gone = base
    for name in members:
        addr = next(a for n, a, _ in lab.nodes if n == name)
        gone = gone.replace(f"      {name}:\n        address: {addr}\n",
                            f"      {name}:\n        address: {addr}\n        state: absent\n")
    lock = lab.work / "inv.lock.yaml"

    def before():
        lab.reset()
        lab.inv.write_text(base)
        lock.unlink(missing_ok=True)
        lab.exec("controller", [WGPROV, "apply", "-i", inv, "--no-guard"] + forks)
        lab.inv.write_text(gone)

    def after():
        lab.inv.write_text(base)
        lock.unlink(missing_ok=True)

    return (lambda: lab.timed([WGPROV, "apply", "-i", inv] + forks)), before, after


def write_pyinfra(lab, render):
    inv = ["hosts = ["]
    for name, addr, nh in lab.nodes:
        inv.append(f"    ({addr!r}, {{'ssh_user': 'root', 'render': {str(render / name)!r}, 'next_hop': {nh}}}),")
    inv.append("]")
    (lab.work / "pyinfra_inventory.py").write_text("\n".join(inv) + "\n")
    (lab.work / "pyinfra_deploy.py").write_text('''from pyinfra import host
from pyinfra.operations import files, server

r = host.data.render
wg = files.put(name="wg0.conf", src=r + "/etc/wireguard/wg0.conf", dest="/etc/wireguard/wg0.conf", mode="600")
files.put(name="kubelet", src=r + "/etc/default/kubelet", dest="/etc/default/kubelet", mode="644")
if host.data.next_hop:
    files.directory(name="/etc/wgprov", path="/etc/wgprov", mode="755")
    files.put(name="port-forward", src=r + "/etc/wgprov/port-forward.md", dest="/etc/wgprov/port-forward.md", mode="644")
    sc = files.put(name="sysctl", src=r + "/etc/sysctl.d/99-wgprov.conf", dest="/etc/sysctl.d/99-wgprov.conf", mode="644")
    server.shell(name="sysctl -p", commands=["sysctl -q -p /etc/sysctl.d/99-wgprov.conf"], _if=sc.did_change)
server.shell(name="wg-quick", commands=["wg-quick down wg0 >/dev/null 2>&1; wg-quick up wg0"], _if=wg.did_change)
''')
    return [str(VENV / "pyinfra"), "-y", "--parallel", str(lab.n), str(lab.work / "pyinfra_inventory.py"),
            str(lab.work / "pyinfra_deploy.py")]


def write_ansible(lab, render):
    hosts = ["[all]"]
    for name, addr, nh in lab.nodes:
        hosts.append(f"{name} ansible_host={addr} render={render / name} next_hop={'true' if nh else 'false'}")
    (lab.work / "hosts.ini").write_text("\n".join(hosts) + "\n")
    (lab.work / "ansible.cfg").write_text(f"""[defaults]
forks = {lab.n}
gathering = explicit
host_key_checking = True
interpreter_python = /usr/bin/python3
remote_user = root
stdout_callback = default
[ssh_connection]
pipelining = True
""")
    (lab.work / "site.yml").write_text("""- hosts: all
  gather_facts: false
  tasks:
    - copy: {src: "{{ render }}/etc/wireguard/wg0.conf", dest: /etc/wireguard/wg0.conf, mode: "0600"}
      notify: wg-quick
    - copy: {src: "{{ render }}/etc/default/kubelet", dest: /etc/default/kubelet, mode: "0644"}
    - file: {path: /etc/wgprov, state: directory, mode: "0755"}
      when: next_hop | bool
    - copy: {src: "{{ render }}/etc/wgprov/port-forward.md", dest: /etc/wgprov/port-forward.md, mode: "0644"}
      when: next_hop | bool
    - copy: {src: "{{ render }}/etc/sysctl.d/99-wgprov.conf", dest: /etc/sysctl.d/99-wgprov.conf, mode: "0644"}
      when: next_hop | bool
      notify: sysctl
  handlers:
    - name: wg-quick
      shell: wg-quick down wg0 >/dev/null 2>&1; wg-quick up wg0
    - name: sysctl
      command: sysctl -q -p /etc/sysctl.d/99-wgprov.conf
""")
    return ["env", f"ANSIBLE_CONFIG={lab.work / 'ansible.cfg'}", f"PATH={VENV}:/usr/sbin:/usr/bin:/sbin:/bin",
            str(VENV / "ansible-playbook"), "-i", str(lab.work / "hosts.ini"), str(lab.work / "site.yml")]


def versions():
    v = {}
    v["wgprov"] = sh([WGPROV, "--version"]).stdout.strip()
    v["OpenSSH"] = sh(["ssh", "-V"]).stderr.strip()
    v["pyinfra"] = sh([str(VENV / "pyinfra"), "--version"]).stdout.strip().splitlines()[0]
    v["ansible-core"] = sh([str(VENV / "ansible-playbook"), "--version"]).stdout.splitlines()[0]
    v["wireguard-go"] = sh(["wireguard-go", "--version"]).stdout.strip().splitlines()[0]
    return v


def bench(n):
    work = HERE / "work" / str(n)
    work.mkdir(parents=True, exist_ok=True)
    lab = Lab(n, work)
    try:
        render = work / "render"
        sh(["rm", "-rf", str(render)])
        sh([WGPROV, "render", "-i", str(lab.inv), "--out", str(render)])
        inv = str(lab.inv)
        # a large fleet on 2 cores: give each host's change more time before the guard calls it lost
        forks = ["--forks", str(n)] + (["--confirm-timeout", "300", "--connect-timeout", "60"] if n > 200 else [])
        rows = {}
        print(f"N={n}: floor", flush=True)
        rows[FLOOR] = median_of(ssh_floor(lab, "curve25519-sha256"))
        rows["floor (ssh true, default kex)"] = median_of(ssh_floor(lab, None))
        print(f"N={n}: hand floor and wgprov first apply --no-guard, alternately", flush=True)
        # what pyinfra and Ansible do (write, restart, no verdict on the network)
        hand, first, PAIRS[n] = paired(hand_floor(lab, render),
                                       lambda: lab.timed([WGPROV, "apply", "-i", inv, "--no-guard"] + forks),
                                       lab.reset)
        rows[HAND] = hand
        rows[NO_GUARD] = first
        print(f"N={n}: wgprov", flush=True)
        # the target CPU of connecting and gathering facts alone (the first phase of a first apply)
        rows[CHECK] = median_of(
            lambda: lab.timed(["sh", "-c", f"{WGPROV} apply -i {inv} --forks {n} --check >/dev/null"]), lab.reset)
        if n <= TOOLS_UP_TO:
            # on 2 cores that also run every node, 500 first handshakes and 500 fresh connections
            # do not all finish in time: a guarded first apply is put back (the guard refusing
            # what it cannot vouch for). Above TOOLS_UP_TO it is left out; the changing runs
            # below are guarded.
            run, gates = guarded_first(lab, [WGPROV, "apply", "-i", inv] + forks)
            rows[GUARDED] = median_of(run, lab.reset)
            GATES[n] = gates[1:]
        rows["wgprov no-change apply"] = median_of(lambda: lab.timed([WGPROV, "apply", "-i", inv] + forks))
        # the per-host phases of a first apply (guarded where the guarded figure is measured)
        lab.reset()
        timings = lab.exec("controller", [WGPROV, "apply", "-i", inv, "--timings"] + forks
                           + (["--no-guard"] if n > TOOLS_UP_TO else [])).stdout
        rows["wgprov apply --check --diff"] = median_of(
            lambda: lab.timed(["sh", "-c", f"{WGPROV} apply -i {inv} --forks {n} --check --diff >/dev/null"]), lab.reset)
        lab.exec("controller", [WGPROV, "apply", "-i", inv, "--no-guard"] + forks)
        # a changing apply (every next-hop's keepalive toggles, so each run changes the same
        # hosts), with the guard (gate, fresh connections, confirm) and without
        base = lab.inv.read_text()
        keepalive = [20]

        def bump():
            keepalive[0] = 21 if keepalive[0] != 21 else 22
            lab.inv.write_text(base.replace("  cluster_cidrs:", f"  persistent_keepalive: {keepalive[0]}\n  cluster_cidrs:", 1))
        try:
            rows["wgprov changing apply, guard"] = median_of(lambda: lab.timed([WGPROV, "apply", "-i", inv] + forks), bump)
        except RuntimeError as e:
            if n <= TOOLS_UP_TO:
                raise
            # record what the guard said instead of losing the other figures of a long run
            NOTES.setdefault(n, []).append(f"guarded changing apply failed: {str(e)[:600]}")
            lab.exec("controller", [WGPROV, "apply", "-i", inv, "--no-guard"] + forks, check=False)
        rows["wgprov changing apply, --no-guard"] = median_of(
            lambda: lab.timed([WGPROV, "apply", "-i", inv, "--no-guard"] + forks), bump)
        lab.inv.write_text(base)
        lab.exec("controller", [WGPROV, "apply", "-i", inv, "--no-guard"] + forks)

        def lifecycle(name, fn, before=None):
            try:
                rows[name] = median_of(fn, before)
            except RuntimeError as e:
                if n <= TOOLS_UP_TO:
                    raise
                NOTES.setdefault(n, []).append(f"{name} failed: {str(e)[:600]}")
                lab.inv.write_text(base)
                lab.exec("controller", [WGPROV, "apply", "-i", inv, "--no-guard"] + forks, check=False)
        # a changing apply as large as rotate-keys: every host's wg0.conf changes (preshared keys
        # on every link, then off again), a `wg syncconf` everywhere, guarded
        psk = [False]

        def toggle():
            psk[0] = not psk[0]
            lab.inv.write_text(base.replace("  cluster_cidrs:", "  preshared_keys: true\n  cluster_cidrs:", 1)
                               if psk[0] else base)
        lifecycle("wgprov changing apply, whole fleet (preshared keys on/off), guard",
                  lambda: lab.timed([WGPROV, "apply", "-i", inv] + forks), toggle)
        lab.inv.write_text(base)
        lab.exec("controller", [WGPROV, "apply", "-i", inv, "--no-guard"] + forks)
        # the lifecycle operations: every node's keys rotated (guarded), 10% of the nodes taken out
        lifecycle("wgprov rotate-keys, whole fleet", lambda: lab.timed([WGPROV, "rotate-keys", "-i", inv] + forks))
        remove, before, after = removal(lab, inv, forks)
        lifecycle("wgprov taking 10% of the nodes out", remove, before)
        after()
        lab.reset()
        lab.exec("controller", [WGPROV, "apply", "-i", inv, "--no-guard"] + forks)
        if ONLY == "wgprov" or n > TOOLS_UP_TO:
            for k, (w, c, m, t) in rows.items():
                print(f"  {k:<32} wall {w:.3f} s  controller CPU {c:.2f} s  peak {m:.0f} MiB  target CPU {t:.2f} s")
            return rows, timings, {}
        print(f"N={n}: pyinfra", flush=True)
        py = write_pyinfra(lab, render)
        rows["pyinfra first run"] = median_of(lambda: lab.timed(py), lab.reset)
        rows["pyinfra no-change run"] = median_of(lambda: lab.timed(py))
        print(f"N={n}: ansible", flush=True)
        an = write_ansible(lab, render)
        rows["ansible first run"] = median_of(lambda: lab.timed(an), lab.reset)
        rows["ansible no-change run"] = median_of(lambda: lab.timed(an))
        # every host ok after the tools ran: wgprov still sees nothing to change? (it must not:
        # the others wrote other keys, so wgprov adopts them and everything stays consistent)
        check = lab.exec("controller", [WGPROV, "apply", "-i", inv, "--format", "json"] + forks, check=False)
        summary = json.loads(check.stdout)["summary"]
        return rows, timings, summary
    finally:
        lab.down()


def table(n, rows):
    floor = rows[FLOOR][0]
    wg_nc = rows["wgprov no-change apply"][0]
    out = [f"### N = {n} hosts (5 sites)", "",
           "| run | wall s | controller CPU s | controller peak MiB | target CPU s |",
           "| --- | ---: | ---: | ---: | ---: |"]
    for k, (w, c, m, t) in rows.items():
        out.append(f"| {k} | {w:.2f} | {c:.2f} | {m:.0f} | {t:.2f} |")
    r = lambda k: rows[k][0] if k in rows else None
    cpu = lambda k: rows[k][3] if k in rows else None
    ratios = [
        ("wgprov no-change / floor", wg_nc, floor, 2),
        ("wgprov first apply --no-guard / hand floor, wall", r(NO_GUARD),
         r(HAND), 2),
        ("wgprov first apply, guard / hand floor, wall", r(GUARDED),
         r(HAND), 2),
        ("wgprov first apply --no-guard / hand floor, target CPU", cpu(NO_GUARD),
         cpu(HAND), 2),
        ("wgprov first apply, guard / hand floor, target CPU", cpu(GUARDED),
         cpu(HAND), 2),
        ("wgprov rotate-keys / changing apply of the whole fleet, guard", r("wgprov rotate-keys, whole fleet"),
         r("wgprov changing apply, whole fleet (preshared keys on/off), guard"), 2),
        ("wgprov taking 10% out / changing apply, guard", r("wgprov taking 10% of the nodes out"),
         r("wgprov changing apply, guard"), 2),
        ("wgprov changing apply, guard / --no-guard", r("wgprov changing apply, guard"),
         r("wgprov changing apply, --no-guard"), 2),
        ("pyinfra / wgprov, no-change", r("pyinfra no-change run"), wg_nc, 1),
        ("Ansible / wgprov, no-change", r("ansible no-change run"), wg_nc, 1),
        ("wgprov first apply, guard / --no-guard", r(GUARDED), r(NO_GUARD), 2),
        ("pyinfra / wgprov --no-guard, first run", r("pyinfra first run"), r(NO_GUARD), 1),
        ("Ansible / wgprov --no-guard, first run", r("ansible first run"), r(NO_GUARD), 1),
        ("pyinfra / wgprov guarded, first run", r("pyinfra first run"), r(GUARDED), 1),
        ("pyinfra no-change / wgprov --check --diff", r("pyinfra no-change run"), r("wgprov apply --check --diff"), 1),
        ("Ansible no-change / wgprov --check --diff", r("ansible no-change run"), r("wgprov apply --check --diff"), 1),
    ]
    out += ["", "| ratio | value |", "| --- | ---: |"]
    out += [f"| {name} | {a / b:.{d}f} |" for name, a, b, d in ratios if a is not None and b]
    if n in PAIRS:
        w, c = PAIRS[n]
        out += [f"| wgprov first apply --no-guard / hand floor, wall, median of paired runs | {w:.2f} |",
                f"| wgprov first apply --no-guard / hand floor, target CPU, median of paired runs | {c:.2f} |"]
    if GATES.get(n):
        hand = r(HAND)
        gate = statistics.median(g for _, g in GATES[n])
        rest = statistics.median(w - g for w, g in GATES[n])
        out += [f"| wgprov first apply, guard: the gate's wait for the new links' first handshakes, s | {gate:.2f} |",
                f"| wgprov first apply, guard, without that wait / hand floor, wall | {rest / hand:.2f} |"]
    out += ["", "Target CPU by phase (each the difference of two figures above):", "",
            "| phase | hand floor s | wgprov s |", "| --- | ---: | ---: |"]
    phase = lambda a, b: f"{cpu(a) - cpu(b):.2f}" if cpu(a) is not None and cpu(b) is not None else "—"
    out += [f"| connect (wgprov: and gather facts) | {cpu(FLOOR):.2f} | {cpu(CHECK):.2f} |",
            f"| the change: files, wg0 up, handlers (wgprov: lock, backup, self-check) | {phase(HAND, FLOOR)} | {phase(NO_GUARD, CHECK)} |",
            f"| the guard: dead-man, gate, confirmation on fresh connections | — | {phase(GUARDED, NO_GUARD)} |"]
    if n > TOOLS_UP_TO:
        out.append(f"\n(pyinfra and Ansible left out above {TOOLS_UP_TO} hosts: FLEET_TOOLS_UP_TO)")
    for note in NOTES.get(n, []):
        out.append(f"\nNote: {note}")
    out.append("")
    return "\n".join(out)


def main():
    ns = [int(a) for a in sys.argv[1:]] or [10, 50]
    v = versions()
    parts = ["# Fleet benchmark results", "",
             f"Machine: {platform.node()}, {os.cpu_count()} cores, {platform.platform()}; "
             "each figure the median of the runs after a warm-up; all hosts are lab namespaces on this machine, "
             "so targets' CPU competes with the controller's.", "",
             "Command: `benches/fleet/run.sh [N…]` (FLEET_RUNS sets the runs per figure). Exact tool commands: "
             "`wgprov apply -i inv.yaml --forks N` (first run after a reset of every node; `--check --diff` "
             "on the reset network); `pyinfra -y --parallel N pyinfra_inventory.py pyinfra_deploy.py`; "
             "`ansible-playbook -i hosts.ini site.yml` (forks = N, pipelining, gathering explicit, "
             "interpreter /usr/bin/python3); floor: `ssh -o BatchMode=yes -o ControlMaster=no "
             "-o KexAlgorithms=curve25519-sha256 root@host true` for every host at once. The generated "
             "files are in benches/fleet/work/N/. The hand floor and the --no-guard first apply run "
             "alternately, pair by pair. Before every first run the nodes' files are moved aside, not deleted: "
             "all lab nodes share one ext4, where each new inode skips every inode freed in the last minute, "
             "so deleting 50 nodes' files before a run made it pay for inodes a fresh host never freed.", ""]
    # sections per N are kept across invocations (results.json), so that `run.sh 200` adds to
    # an earlier `run.sh 10 50` instead of replacing it
    store = HERE / "results.json"
    sections = json.loads(store.read_text()) if store.exists() else {}
    try:
        for n in ns:
            rows, timings, summary = bench(n)
            if ONLY == "wgprov" and n <= TOOLS_UP_TO:
                continue
            t = table(n, rows)
            print(t, flush=True)
            phases = "\n".join(l for l in timings.splitlines() if "connect=" in l)[:6000]
            sections[str(n)] = "\n".join([
                t, f"Runs per figure: {RUNS} (after a warm-up). Versions: " + "; ".join(f"{k}: {x}" for k, x in v.items()), "",
                "wgprov per-host phases (one first apply, `--timings`; the guard's column is the host's share, "
                "the gate's wait is the network's):", "", "```", phases, "```", "",
                (f"After pyinfra and Ansible wrote the same bytes, a wgprov apply reports: {summary}"
                 if summary else ""), ""])
            store.write_text(json.dumps(sections, indent=1))
    finally:
        teardown()
    parts += [sections[k] for k in sorted(sections, key=int)]
    (HERE / "RESULTS.md").write_text("\n".join(parts) + "\n")
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
