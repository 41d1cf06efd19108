#!/usr/bin/env python3
"""Prove that no QEMU outlives an interrupted lab run.

1. Ctrl-C: start `cargo xtask lab` in its own process group with default
   signal dispositions (as a terminal would), wait until its VMs run, send
   SIGINT to the whole group, and require every QEMU to be gone.
2. Test-runner timeout: same, but SIGKILL only the harness process (what
   a runner's timeout does to the test binary) and require the same.

QEMU sits in its own process group, so it never sees the group signal: the
harness's PR_SET_PDEATHSIG is what must kill it.
"""
import os, signal, subprocess, sys, time

def qemus():
    out = subprocess.run(["pgrep", "-x", "qemu-system-x86"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]

def harness_pids(root):
    out = subprocess.run(["pgrep", "-f", "target/debug/deps/lab-"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != root]

def start():
    def child_setup():
        os.setsid()
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
            signal.signal(s, signal.SIG_DFL)
    p = subprocess.Popen(["cargo", "xtask", "lab", "namespaces/"], preexec_fn=child_setup,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        if qemus():
            return p
        if p.poll() is not None:
            sys.exit(f"the lab exited ({p.returncode}) before starting a VM")
        time.sleep(0.1)
    sys.exit("no VM started within 300 s")

def gone_within(seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not qemus():
            return True
        time.sleep(0.1)
    return False

if not gone_within(5):
    sys.exit(f"QEMU is already running before the check (pids {qemus()}); stop it first")
failed = False
p = start()
os.killpg(p.pid, signal.SIGINT)
ok = gone_within(5)
print(f"interrupt-check: Ctrl-C (SIGINT to the group): {'no QEMU left' if ok else 'QEMU LEFT RUNNING'}")
failed |= not ok
p.wait()

p = start()
for pid in harness_pids(p.pid):
    os.kill(pid, signal.SIGKILL)
ok = gone_within(5)
print(f"interrupt-check: SIGKILL of the harness: {'no QEMU left' if ok else 'QEMU LEFT RUNNING'}")
failed |= not ok
os.killpg(p.pid, signal.SIGKILL)
p.wait()
for pid in qemus():
    os.kill(pid, signal.SIGKILL)
sys.exit(1 if failed else 0)
