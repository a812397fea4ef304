"""What a node's error reply means for the user's ACL, and how to fix it.

A least-privilege user (``ACL SETUSER``) that lacks a command the lock scripts
run gets, from Redis 6.2, "Error running script (call to f_<sha>):
@user_script:2: ... can't run this command": the SHA of a script the user never
wrote, not the command. The line number names it: each line of our scripts
makes at most one ``redis.call``. Every message then says which permission to
add (the README's "Least privilege" lists them all).
"""

from __future__ import annotations

import re

_SEE = "(README: Least privilege)"
_NAMED = re.compile(r"permissions to run the '([\w|]+)' command")
_SCRIPT_LINE = re.compile(r"@user_script:(\d+):")
_CALL = re.compile(r'redis\.p?call\("(\w+)"')


def describe(exc: BaseException, script: str | None = None) -> str:
    """``exc`` as a vote's message: its type and text, and, for a permission
    the node denied, the ACL rule that would allow it."""
    text = f"{type(exc).__name__}: {exc}"
    fix = _fix(str(exc), type(exc).__name__, script)
    return text if fix is None else f"{text}; {fix}"


def _fix(message: str, kind: str, script: str | None) -> str | None:
    named = _NAMED.search(message)
    if "can't run this command" in message or (named and "script" in message):
        command = named.group(1) if named else _command_at(message, script)
        what = command.upper() if command else "a command"
        rule = f"+{command.lower()}" if command else "the command"
        return f"the ACL user may not run {what} in the lock scripts: add {rule} {_SEE}"
    if named:
        return f"the ACL user may not run {named.group(1).upper()}: add +{named.group(1)} {_SEE}"
    # Redis 6.2: "... access one of the keys ..."; 7+ and Valkey: "... access a key".
    if "one of the keys" in message or "access a key" in message:
        return (
            "the ACL user's key pattern must cover the lock keys and the marker "
            f"key <key_prefix>__redlock__:marker: add ~<key_prefix>* {_SEE}"
        )
    if kind == "NoScriptError" and script is not None:
        return (
            "the node has not loaded the lock script and the ACL user may not "
            f"load it: add +script|load {_SEE}"
        )
    return None


def _command_at(message: str, script: str | None) -> str | None:
    """The command on the script line that the error names."""
    line = _SCRIPT_LINE.search(message)
    if line is None or script is None:
        return None
    lines = script.splitlines()
    index = int(line.group(1)) - 1
    if not 0 <= index < len(lines):
        return None
    call = _CALL.search(lines[index])
    return call.group(1).lower() if call else None
