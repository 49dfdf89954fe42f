"""Where a shard location's bytes are: a local folder, an http(s):// URL of a folder, a brace pattern of tars, a
`pipe:` command, or an s3:// / gs:// / other fsspec URL; which manifest.json goes with it; and how a URL is
opened. Opening is the webdataset library's `gopen` (http(s) through curl, `pipe:` through a shell, local files)
and fsspec for every other protocol whose package is installed; no HTTP client of our own.

A location names a shard *folder* (manifest.json beside the tars) unless it is a `pipe:` command, holds a brace
range (`{000000..000009}`) or ends in `.tar`: then it names a *list* of tars, and its manifest.json is read from
the same place with the last tar name replaced by `manifest.json` (`http://h/c/shard-{000000..000009}.tar` ->
`http://h/c/manifest.json`; `pipe:cat /d/shard-000000.tar` -> `pipe:cat /d/manifest.json`). Sample counts come
from that manifest, so a pattern needs its manifest beside the tars, as videobert-prepare writes it.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from typing import IO

GOPEN_SCHEMES = ("http", "https", "pipe")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_RANGE = re.compile(r"\{[^{}]*\.\.[^{}]*\}|\{[^{}]*,[^{}]*\}")  # braceexpand's {a..b} and {x,y}
_TAR_NAME = re.compile(r"[^\s/'\"]*\.tar(?=$|[\s'\"])")  # a tar's file name (braces allowed) inside a location


def scheme(location: str) -> str:
    """ "pipe" for a pipe: command, the URL scheme in lower case ("http", "s3", "file"), or "" for a plain path."""
    if location.startswith("pipe:"):
        return "pipe"
    m = _SCHEME.match(location)
    return m.group(1).lower() if m else ""


def is_local(location: str) -> bool:
    """A plain path or a file:// URL (read from this machine's file system)."""
    return scheme(location) in ("", "file")


def local_path(location: str) -> str:
    """The path of a local location (file:// stripped)."""
    return re.sub(r"^file://", "", location) if scheme(location) == "file" else location


def names_list(location: str) -> bool:
    """True when the location names tars (a pipe: command, a brace pattern, a .tar), not a shard folder."""
    return scheme(location) == "pipe" or bool(_RANGE.search(location)) or bool(_TAR_NAME.search(location))


def tar_name(location: str) -> str | None:
    """The file name of the (last) tar a location names, e.g. `shard-000003.tar`; None when it names none."""
    found = _TAR_NAME.findall(location)
    return found[-1] if found else None


def manifest_url(location: str) -> str:
    """Where the manifest.json of a location is (see the module docstring)."""
    if names_list(location):
        name = tar_name(location)
        if name is None:
            raise ValueError(f"{location}: names no .tar file, so its manifest.json cannot be found")
        i = location.rfind(name)
        return location[:i] + "manifest.json" + location[i + len(name) :]
    return join(location, "manifest.json")


def join(folder: str, name: str) -> str:
    """A file in a folder location: a path join for local folders, a '/' join for URLs."""
    if is_local(folder):
        return os.path.join(local_path(folder), name)
    return folder.rstrip("/") + "/" + name


def location_problem(location: str) -> str | None:
    """Why this machine cannot open `location` at all (an fsspec protocol whose package is missing, an unknown
    one), in one line; None when it can try."""
    s = scheme(location)
    if s in ("", "file", *GOPEN_SCHEMES):
        return None
    try:
        import fsspec
    except ImportError:
        return f"{location}: reading {s}:// needs fsspec and its {s} package (pip install fsspec)"
    try:
        fsspec.get_filesystem_class(s)
    except ImportError as err:  # a known protocol whose package is not installed: fsspec says which one
        return f"{location}: {str(err).splitlines()[0]}"
    except ValueError:
        return f"{location}: unknown protocol {s}:// (http(s)://, pipe:, a path, or an fsspec protocol)"
    return None


# curl's exit codes a user meets when a shard server misbehaves (webdataset runs `curl -f -s -L URL`)
_CURL_EXIT = {
    6: "host not found",
    7: "connection refused",
    18: "connection dropped mid-transfer",
    22: "HTTP error (e.g. 404)",
    28: "timed out",
    52: "empty reply",
    56: "connection reset",
}


def open_url(url: str) -> IO[bytes]:
    """A binary stream over `url` (a path, http(s)://, pipe:, or an fsspec URL). Errors surface as OSError on
    open or read (curl's and a pipe command's exit status included)."""
    s = scheme(url)
    if s in ("", "file"):
        return open(local_path(url), "rb")  # noqa: SIM115 (the caller closes it)
    if s in GOPEN_SCHEMES:
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    problem = location_problem(url)
    if problem:
        raise OSError(problem)
    import fsspec

    return fsspec.open(url, "rb").open()


def explain(err: BaseException) -> str:
    """A one-line reason for a read error: curl's exit code in words, else the error's first line."""
    status = getattr(err, "curl_status", None)
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    m = re.search(r"'curl'.*exit (\d+)", str(err))
    if m or status is not None:
        code = int(m.group(1)) if m else status
        return f"curl exit {code}: {_CURL_EXIT.get(code, 'transfer failed')}"
    m = re.search(r"exit (\d+) \(read\)", str(err))
    if m:
        return f"command exit {m.group(1)}"
    return text if len(text) <= 200 else text[:200] + "..."


def child_failure(stream: object) -> str | None:
    """For a gopen pipe (curl, a pipe: command) whose data ended badly: close it, wait for the child and say why it
    failed (curl's exit code in words), or None when it did not (or the stream is no pipe). A tar reader often
    sees the short data before the child has exited, so its own error ("empty header") hides the real cause."""
    proc = getattr(stream, "proc", None)
    if proc is None:
        return None
    with contextlib.suppress(OSError):
        stream.stream.close()  # a child still writing gets SIGPIPE now instead of blocking the wait
    try:
        status = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return None
    if status in (0, 23, 141, -13):  # done, or stopped by our close (write error / SIGPIPE)
        return None
    if isinstance(proc.args, (list, tuple)) and proc.args[:1] == ["curl"]:
        return f"curl exit {status}: {_CURL_EXIT.get(status, 'transfer failed')}"
    return f"command exit {status}"


def read_url(url: str) -> bytes:
    """The whole content of `url` (small files: a manifest); OSError with a one-line reason."""
    try:
        with open_url(url) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{url} not found") from None
    except OSError as err:
        raise OSError(f"cannot read {url} ({explain(err)})") from None
