"""Drives `banger mcp` with the reference MCP client (the `mcp` package from PyPI) over stdio.

Run by crates/banger-cli/tests/cli/mcp.rs with one JSON argument:
  command    the server's argv (`ip netns exec NS banger mcp`)
  env        its environment
  repo       a git repository inside the owner's home (for workspace_prepare)
  outside    a directory outside the home (refused)
  cli_vm     a VM made with the CLI (origin api: vm_delete must refuse it)
  patch_out  where to write the exported patch (the Rust side checks it with git apply)
  max_vms    config mcp.max_vms
  mode       "fake" (every check, against the fake Firecracker) or "guest" (vm_run only,
             with kernel_version, the guest kernel's `uname -r`)

Every check is an assert; the script prints one `ok STEP` line per step, so a failure shows
how far it got, and exits non-zero on the first failed check.
"""

import base64
import json
import sys

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

SPEC = json.loads(sys.argv[1])

TOOLS = {
    "vm_run", "vm_create", "vm_list", "vm_show", "vm_exec", "vm_delete", "vm_ports",
    "workspace_prepare", "workspace_export", "file_read", "file_write", "file_list",
}


def ok(step):
    print(f"ok {step}", flush=True)


def text_of(res):
    return "".join(c.text for c in res.content if getattr(c, "type", "") == "text")


async def call(s, tool, args, **kw):
    """A tool call that must succeed; its structured content."""
    res = await s.call_tool(tool, args, **kw)
    assert not res.is_error, f"{tool} {args} failed: {text_of(res)}"
    assert isinstance(res.structured_content, dict), f"{tool}: {res}"
    return res.structured_content


async def refused(s, tool, args, needle):
    """A tool call that must come back as a tool error naming `needle`; its text."""
    res = await s.call_tool(tool, args)
    msg = text_of(res)
    assert res.is_error, f"{tool} {args} should have failed, got {res.structured_content}"
    assert needle in msg, f"{tool} {args}: {needle!r} not in {msg!r}"
    return msg


async def vm_names(s):
    return {v["name"] for v in (await call(s, "vm_list", {}))["vms"]}


async def checks(s):
    init = await s.initialize()
    assert init.server_info.name == "banger", init.server_info
    assert init.protocol_version >= "2025-06-18", init.protocol_version
    assert init.capabilities.tools is not None
    ok("initialize")

    tools = (await s.list_tools()).tools
    assert {t.name for t in tools} == TOOLS, sorted(t.name for t in tools)
    for t in tools:
        assert t.input_schema.get("type") == "object", (t.name, t.input_schema)
        assert t.description and len(t.description) > 40, t.name
    ok("tools/list")

    progress = []

    async def on_progress(value, total, message):
        progress.append((value, message))

    run = await call(
        s,
        "vm_run",
        {"command": "echo out; echo err >&2; exit 3"},
        progress_callback=on_progress,
    )
    assert run["exit_code"] == 3, run
    assert run["stdout"] == "out\n" and run["stderr"] == "err\n", run
    assert run["deleted"] is True and not run["timed_out"], run
    assert run["vm"] not in await vm_names(s), "vm_run left its VM"
    messages = [m for _, m in progress]
    assert any(m.startswith("create: ") for m in messages), messages
    assert any("ready" in m for m in messages), messages
    values = [v for v, _ in progress]
    assert values == sorted(values) and len(set(values)) == len(values), values
    ok("vm_run with progress")

    if SPEC["mode"] == "guest":
        uname = await call(s, "vm_run", {"command": "uname -r; cat", "stdin": "from stdin\n"})
        assert uname["exit_code"] == 0, uname
        assert uname["stdout"] == SPEC["kernel_version"] + "\nfrom stdin\n", uname
        assert uname["deleted"] is True, uname
        ok("vm_run in the guest")
        return

    vm = (await call(s, "vm_create", {"name": "agent1"}))
    assert vm["name"] == "agent1" and vm["origin"] == "mcp" and vm["state"] == "running", vm
    ok("vm_create")

    ex = await call(s, "vm_exec", {"vm": "agent1", "command": "tr a-z A-Z", "stdin": "hello\n"})
    assert ex["stdout"] == "HELLO\n" and ex["exit_code"] == 0 and ex["cwd"] == "/root", ex
    ex = await call(
        s, "vm_exec",
        {"vm": "agent1", "command": "echo \"$GREETING\" in \"$PWD\"", "env": {"GREETING": "hi"},
         "cwd": "/tmp"},
    )
    assert ex["stdout"] == "hi in /tmp\n", ex
    big = await call(s, "vm_exec", {"vm": "agent1", "command": "head -c 100000 /dev/zero | tr '\\0' x"})
    assert big["stdout_truncated"] and big["stdout_bytes"] == 100000, big
    assert big["stdout"].endswith(
        "\n[banger: stdout truncated: the first 65536 of 100000 bytes are shown]"), big["stdout"][-100:]
    slow = await s.call_tool("vm_exec", {"vm": "agent1", "command": "sleep 30", "timeout_secs": 1})
    assert not slow.is_error and slow.structured_content["timed_out"], slow
    assert slow.structured_content["exit_code"] is None, slow
    ok("vm_exec with stdin, env, cwd, a cap and a timeout")

    w = await call(s, "file_write", {"vm": "agent1", "path": "/root/notes/a.txt",
                                     "content": "hi there\n", "mode": "0600"})
    assert w == {"path": "/root/notes/a.txt", "bytes": 9, "mode": "0600"}, w
    r = await call(s, "file_read", {"vm": "agent1", "path": "/root/notes/a.txt"})
    assert r["content"] == "hi there\n" and r["encoding"] == "utf8", r
    assert r["mode"] == "0600" and r["size"] == 9 and not r["truncated"], r
    blob = bytes(range(256)) * 3
    await call(s, "file_write", {"vm": "agent1", "path": "/root/notes/b.bin",
                                 "content": base64.b64encode(blob).decode(), "encoding": "base64"})
    r = await call(s, "file_read", {"vm": "agent1", "path": "/root/notes/b.bin"})
    assert r["encoding"] == "base64" and base64.b64decode(r["content"]) == blob, r["encoding"]
    cut = await call(s, "file_read", {"vm": "agent1", "path": "/root/notes/b.bin", "max_bytes": 10})
    assert cut["truncated"] and cut["size"] == 768, cut
    # What vm_exec sees is what file_write wrote.
    seen = await call(s, "vm_exec", {"vm": "agent1", "command": "cat /root/notes/a.txt"})
    assert seen["stdout"] == "hi there\n", seen
    ok("file_write then file_read")

    listing = await call(s, "file_list", {"vm": "agent1", "path": "/root/notes"})
    assert [(e["name"], e["kind"]) for e in listing["entries"]] == [
        ("a.txt", "file"), ("b.bin", "file")], listing
    ok("file_list")

    await refused(s, "file_read", {"vm": "agent1", "path": "notes/a.txt"}, "is relative")
    await refused(s, "file_read", {"vm": "agent1", "path": "/root/nope"}, "not found")
    await refused(s, "file_write", {"vm": "agent1", "path": "/root/x", "content": "x",
                                    "mode": "rwx"}, "octal")
    ok("bad file arguments are tool errors")

    prepared = await call(s, "workspace_prepare", {"vm": "agent1", "path": SPEC["repo"]},
                          progress_callback=on_progress)
    assert prepared["workspace"]["guest_path"] == "/root/repo", prepared
    ex = await call(s, "vm_exec", {"vm": "agent1",
                                   "command": "echo 'changed in the VM' >> README.md && "
                                              "printf 'new\\n' > added.txt && pwd"})
    assert ex["stdout"] == "/root/repo\n", ex
    export = await call(s, "workspace_export", {"vm": "agent1"})
    assert export["encoding"] == "utf8", export["encoding"]
    changed = sorted(f["path"] for f in export["files"])
    assert changed == ["README.md", "added.txt"], export["files"]
    assert "changed in the VM" in export["patch"], export["patch"]
    with open(SPEC["patch_out"], "w") as f:
        f.write(export["patch"])
    with open(SPEC["patch_out"] + ".base", "w") as f:
        f.write(export["base"])
    ok("workspace_prepare then workspace_export")

    await refused(s, "vm_show", {"vm": "no-such-vm"}, "not found")
    await refused(s, "vm_exec", {"vm": "no-such-vm", "command": "true"}, "not found")
    await refused(s, "workspace_prepare", {"vm": "agent1", "path": SPEC["outside"]},
                  "outside the owner's home")
    await refused(s, "vm_run", {"command": "true", "path": SPEC["outside"]},
                  "outside the owner's home")
    await refused(s, "vm_delete", {"vm": SPEC["cli_vm"]}, "was not made through MCP")
    await refused(s, "vm_create", {"name": "x", "colour": "red"}, "unknown field `colour`")
    await refused(s, "vm_exec", {"vm": "agent1"}, "missing field `command`")
    for n in range(2, SPEC["max_vms"] + 1):
        await call(s, "vm_create", {"name": f"agent{n}"})
    await refused(s, "vm_create", {"name": "one-too-many"}, "mcp.max_vms")
    await refused(s, "vm_run", {"command": "true"}, "mcp.max_vms")
    assert SPEC["cli_vm"] in await vm_names(s)
    assert "one-too-many" not in await vm_names(s)
    for n in range(2, SPEC["max_vms"] + 1):
        await call(s, "vm_delete", {"vm": f"agent{n}"})
    ok("bad arguments are tool errors and the server keeps serving")

    ports = await call(s, "vm_ports", {"vm": "agent1"})
    assert isinstance(ports["listeners"], list), ports
    shown = await call(s, "vm_show", {"vm": "agent1"})
    assert shown["workspace"]["guest_path"] == "/root/repo" and shown["origin"] == "mcp", shown
    ok("vm_ports and vm_show")

    # A create cancelled while it runs: the client sends notifications/cancelled when the
    # call's task is cancelled.
    started = anyio.Event()

    async def on_stage(value, total, message):
        started.set()

    async def doomed():
        await s.call_tool("vm_create", {"name": "doomed"}, progress_callback=on_stage)

    async with anyio.create_task_group() as tg:
        tg.start_soon(doomed)
        with anyio.fail_after(30):
            await started.wait()
        tg.cancel_scope.cancel()
    with anyio.fail_after(30):
        while "doomed" in await vm_names(s):
            await anyio.sleep(0.1)
    ok("a cancelled vm_create leaves no VM")

    await call(s, "vm_delete", {"vm": "agent1"})
    assert await vm_names(s) == {SPEC["cli_vm"]}, await vm_names(s)
    ok("vm_delete")


async def main():
    params = StdioServerParameters(command=SPEC["command"][0], args=SPEC["command"][1:],
                                   env=SPEC["env"])
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as s:
            await checks(s)
    print("done", flush=True)


anyio.run(main)
