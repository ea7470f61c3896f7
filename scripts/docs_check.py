"""Keep the docs true: every shell command they show is run, here or by a named test.

It reads the fenced ```bash / ```sh / ```shell / ```console blocks of README.md and
docs/**/*.md and puts every command in one of two places:

* **run here** — a RUNNER below matches it and runs it for real: `manage.py … --help`,
  `prepare_data` on a copy of a repository file, `git clone`, `make check-deploy`, long-running
  services (started until they say they are ready, then stopped), and — given a live server —
  `curl`, SDK heredocs and `manage.py` commands that write to the database;
* **run by a test** — an entry of docs/commands.toml matches it and names the tests that run
  it; the check verifies that each test exists and that its source contains each of the
  entry's `needles` (the command's distinctive words; `a|b` accepts either), so an entry can't
  point at an unrelated test.

A command that is in neither place fails the check, as does an entry that no longer matches
any command, and so does a relative link to a file that doesn't exist. `tests/docs/test_docs_check.py` runs all of it under pytest (so `make test` does);
alone, the script does what needs no server or database:

    .venv/bin/python scripts/docs_check.py           # classify every command, check the registry
    .venv/bin/python scripts/docs_check.py --run     # and run the offline runners
    .venv/bin/python scripts/docs_check.py --list    # show where each command goes

What a runner changes before running a command is listed in SUBSTITUTIONS and in each runner's
docstring; nothing else is rewritten.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = "docs/commands.toml"
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
# The documented server address and the stand-ins for secrets the reader has to paste.
DOC_SERVER = "http://127.0.0.1:8000"
SUBSTITUTIONS = {
    DOC_SERVER: "the live test server's URL",
    "<this repo>": "this checkout's path (git clone)",
    "sk-tunery-…": "a real API key of the test organization",
}


# --- extraction --------------------------------------------------------------------------


@dataclass(frozen=True)
class DocCommand:
    path: str  # relative to ROOT
    line: int  # 1-based line of the command's first line
    text: str  # continuation lines joined; a heredoc keeps its body after a newline

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.text.splitlines()[0]}"


def doc_files(root: Path = ROOT) -> list[Path]:
    files = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    return [f for f in files if f.is_file()]


_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)(\w+)\1")


def strip_comment(line: str) -> str:
    """Drop a trailing `# comment` that is outside quotes (and not part of a word)."""
    quote: str | None = None  # "'", '"' or "$'" (bash's ANSI-C quoting, where \\ escapes)
    escaped = False
    for i, ch in enumerate(line):
        if escaped:
            escaped = False
        elif ch == "\\" and quote != "'":
            escaped = True
        elif quote:
            if ch == quote[-1]:
                quote = None
        elif ch == "'" and i > 0 and line[i - 1] == "$":
            quote = "$'"
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _shell_commands(lines: list[str], start: int, *, console: bool) -> Iterator[tuple[int, str]]:
    i = 0
    while i < len(lines):
        raw, first = lines[i], start + i
        i += 1
        if console:
            if not raw.lstrip().startswith("$ "):
                continue  # output, not a command
            raw = raw.lstrip()[2:]
        text = strip_comment(raw).strip()
        if not text:
            continue
        while text.endswith("\\") and i < len(lines):
            text = text[:-1].rstrip() + " " + strip_comment(lines[i]).strip()
            i += 1
        heredoc = _HEREDOC.search(text)
        if heredoc:
            body = []
            while i < len(lines) and lines[i].strip() != heredoc.group(2):
                body.append(lines[i])
                i += 1
            i += 1  # the terminator
            text = text + "\n" + "\n".join(body) + "\n" + heredoc.group(2)
        yield first, text


def extract_commands(path: Path, root: Path = ROOT) -> list[DocCommand]:
    rel = path.relative_to(root).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    commands: list[DocCommand] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        marker, language = fence.group(2), fence.group(3).lower()
        body_start = i + 1
        j = body_start
        while j < len(lines) and not lines[j].strip().startswith(marker):
            j += 1
        if language in SHELL_LANGUAGES:
            body = lines[body_start:j]
            for line, text in _shell_commands(body, body_start + 1, console=language == "console"):
                commands.append(DocCommand(rel, line, text))
        i = j + 1
    return commands


def all_commands(root: Path = ROOT) -> list[DocCommand]:
    return [c for f in doc_files(root) for c in extract_commands(f, root)]


_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def broken_links(root: Path = ROOT) -> list[str]:
    """Relative Markdown links (outside code blocks) whose target file doesn't exist."""
    problems = []
    for path in doc_files(root):
        in_code = False
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _FENCE.match(line):
                in_code = not in_code
            if in_code:
                continue
            for target in _LINK.findall(line):
                if re.match(r"[a-z]+:", target) or target.startswith("#"):
                    continue  # a URL, or an anchor on the same page
                if not (path.parent / target.split("#")[0]).exists():
                    rel = path.relative_to(root).as_posix()
                    problems.append(f"{rel}:{number}: broken link {target}")
    return problems


# --- the registry: commands that tests run ---------------------------------------------------


@dataclass
class Entry:
    match: str
    tests: list[str]
    how: str
    needles: list[str] = field(default_factory=list)

    def matches(self, command: str) -> bool:
        return re.fullmatch(self.match, command, flags=re.DOTALL) is not None


def load_registry(root: Path = ROOT) -> list[Entry]:
    data = tomllib.loads((root / REGISTRY).read_text(encoding="utf-8"))
    return [
        Entry(
            match=item["match"],
            tests=list(item["tests"]),
            how=item["how"],
            needles=list(item.get("needles", [])),
        )
        for item in data.get("command", [])
    ]


def _test_source(root: Path, test_id: str) -> str | None:
    """The source of `path.py::func` or `path.py::Class::method` (a `[param]` is ignored), or
    of a whole non-Python file (a CI script); None when it doesn't exist."""
    path, _, name = test_id.partition("::")
    file = root / path
    if not file.is_file():
        return None
    source = file.read_text(encoding="utf-8")
    if not name:
        return source
    wanted = re.sub(r"\[.*\]$", "", name).split("::")
    nodes: list[ast.stmt] = ast.parse(source).body
    found: ast.stmt | None = None
    for part in wanted:
        found = next(
            (
                n
                for n in nodes
                if isinstance(n, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
                and n.name == part
            ),
            None,
        )
        if found is None:
            return None
        nodes = found.body if isinstance(found, ast.ClassDef) else []
    assert found is not None
    return ast.get_source_segment(source, found)


def registry_problems(entries: list[Entry], root: Path = ROOT) -> list[str]:
    problems = []
    for entry in entries:
        if not entry.tests:
            problems.append(f"{REGISTRY}: {entry.match!r} names no test")
        for test_id in entry.tests:
            source = _test_source(root, test_id)
            if source is None:
                problems.append(f"{REGISTRY}: {entry.match!r}: no such test {test_id}")
                continue
            for needle in entry.needles:
                if not any(alternative in source for alternative in needle.split("|")):
                    problems.append(
                        f"{REGISTRY}: {entry.match!r}: {test_id} does not contain {needle!r}"
                    )
    return problems


# --- runners: commands this script runs for real ---------------------------------------------


class CheckFailed(Exception):
    pass


@dataclass
class Context:
    """What runners may use. `server`/`key` and `database_env` come from the pytest test."""

    root: Path
    tmp: Path
    server: str | None = None  # a live Tunery, e.g. http://127.0.0.1:43123
    key: str | None = None  # an API key of its test organization
    database_env: dict[str, str] | None = None  # DATABASE_URL etc. of the test database
    timeout: float = 180.0

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
        venv_bin = str(self.root / ".venv" / "bin")
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
        env["HF_HUB_OFFLINE"] = "1"
        return env


@dataclass
class Runner:
    name: str
    pattern: str
    run: Callable[[DocCommand, Context], object]  # what it returns, if anything, is unused
    needs_server: bool = False
    needs_database: bool = False

    def matches(self, command: str) -> bool:
        return re.fullmatch(self.pattern, command, flags=re.DOTALL) is not None


def shell(
    command: str,
    *,
    cwd: Path,
    env: dict[str, str],
    stdin: str = "",
    timeout: float = 180.0,
) -> str:
    """Run `command` with bash (-euo pipefail); its stdout, or CheckFailed with both streams."""
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise CheckFailed(
            f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}"
            f"\n--- stderr\n{result.stderr[-3000:]}"
        )
    return result.stdout


def _shell(
    command: str, ctx: Context, *, cwd: Path, env: dict[str, str] | None = None, stdin: str = ""
) -> str:
    return shell(command, cwd=cwd, env=env or ctx.base_env(), stdin=stdin, timeout=ctx.timeout)


def manage_command(text: str, root: Path = ROOT) -> str:
    """`python manage.py …` / `.venv/bin/python manage.py …` with absolute paths, so it runs
    from any directory with the project's virtualenv."""
    python = root / ".venv" / "bin" / "python"
    return re.sub(r"^(?:\.venv/bin/)?python manage\.py", f"{python} {root / 'manage.py'}", text)


def _python_prefix(ctx: Context) -> str:
    # `python` and `.venv/bin/python` both mean the project's venv, as in the docs.
    return str(ctx.root / ".venv" / "bin" / "python")


def _manage(text: str, ctx: Context) -> str:
    return manage_command(text, ctx.root)


def run_help(cmd: DocCommand, ctx: Context) -> None:
    """`manage.py X --help`: must exit 0 and print a usage line."""
    out = _shell(_manage(cmd.text, ctx), ctx, cwd=ctx.root)
    if "usage:" not in out:
        raise CheckFailed(f"no usage line in:\n{out}")


PREPARE = r"(?:\.venv/bin/)?python manage\.py prepare_data -f (\S+)( -q)?"


def run_prepare_data(cmd: DocCommand, ctx: Context) -> str:
    """`prepare_data -f FILE [-q]` on a copy of FILE's directory, from a scratch directory laid
    out like the repository, so its output (file names included) is what a reader sees.
    Without -q every question gets the default answer (Enter). Returns the output."""
    match = re.fullmatch(PREPARE, cmd.text)
    assert match is not None
    source = ctx.root / match.group(1)
    if not source.is_file():
        raise CheckFailed(f"{match.group(1)} does not exist")
    work = Path(tempfile.mkdtemp(dir=ctx.tmp, prefix="prepare-"))
    copy = work / match.group(1)
    shutil.copytree(source.parent, copy.parent)
    return _shell(_manage(cmd.text, ctx), ctx, cwd=work, stdin="\n" * 20)


def run_git_clone(cmd: DocCommand, ctx: Context) -> None:
    """`git clone <this repo> DIR && cd DIR`, cloning this checkout into a scratch directory."""
    work = Path(tempfile.mkdtemp(dir=ctx.tmp, prefix="clone-"))
    _shell(cmd.text.replace("<this repo>", str(ctx.root)), ctx, cwd=work)


def venv_is_current(root: Path, env: dict[str, str]) -> bool:
    """Whether `make` would leave .venv alone: a stale one would be reinstalled (network)."""
    done = subprocess.run(
        ["make", "-q", ".venv/.installed"], cwd=root, env=env, capture_output=True, timeout=60
    )
    return done.returncode == 0


def run_make_check_deploy(cmd: DocCommand, ctx: Context) -> None:
    """`make check-deploy`: the Makefile sets production settings itself."""
    env = ctx.base_env()
    if not venv_is_current(ctx.root, env):
        raise CheckFailed(".venv is older than the requirements; run `make venv` first")
    env["DATA_DIR"] = tempfile.mkdtemp(dir=ctx.tmp, prefix="deploy-")
    _shell(cmd.text, ctx, cwd=ctx.root, env=env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


READY = {
    # Celery logs these at INFO: a command without `--loglevel INFO` never looks ready.
    "celery worker": re.compile(r"\bready\."),
    "celery beat": re.compile(r"beat: Starting"),
    "uvicorn": re.compile(r"Uvicorn running on"),
    "serve_inference": re.compile(r"Serving the Tunery engine on"),
}


def run_service(cmd: DocCommand, ctx: Context) -> None:
    """A long-running process (workers, beat, uvicorn, serve_inference): start it in a scratch
    DATA_DIR with the embedded SQLite/filesystem-broker setup, wait until it logs that it is
    ready, stop it. Ports: `--port N` becomes a free port."""
    text = cmd.text
    if "serve_inference" in text:
        kind = "serve_inference"
    elif "uvicorn" in text:
        kind = "uvicorn"
    else:
        kind = "celery beat" if " beat" in text else "celery worker"
    env = ctx.base_env()
    for name in ("DATABASE_URL", "CELERY_BROKER_URL"):
        env.pop(name, None)
    env["DATA_DIR"] = tempfile.mkdtemp(dir=ctx.tmp, prefix="service-")
    port = _free_port()
    text = re.sub(r"--port \d+", f"--port {port}", _manage(text, ctx))
    log = Path(env["DATA_DIR"]) / "out.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", text],  # its own process group: stopped as a whole below
            cwd=ctx.root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + ctx.timeout
            while time.monotonic() < deadline:
                if READY[kind].search(log.read_text(errors="replace")):
                    time.sleep(2)  # still alive a moment later: it didn't fail right after
                    if proc.poll() is None:
                        return
                if proc.poll() is not None:
                    raise CheckFailed(f"exited {proc.returncode}:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
            raise CheckFailed(f"not ready after {ctx.timeout}s:\n{log.read_text()[-3000:]}")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def _server_env(ctx: Context) -> dict[str, str]:
    assert ctx.server and ctx.key
    env = ctx.base_env()
    env.update(
        KEY=ctx.key,
        OPENAI_API_KEY=ctx.key,
        OPENAI_BASE_URL=f"{ctx.server}/v1",
        OPENAI_API_BASE=f"{ctx.server}/v1",
    )
    return env


def _to_server(text: str, ctx: Context) -> str:
    assert ctx.server and ctx.key
    return text.replace(DOC_SERVER, ctx.server).replace("sk-tunery-…", ctx.key)


def run_curl(cmd: DocCommand, ctx: Context) -> None:
    """`curl … http://127.0.0.1:8000/…` against the live server, $KEY set to a real key; the
    answer must be JSON without an error."""
    out = _shell(_to_server(cmd.text, ctx), ctx, cwd=ctx.root, env=_server_env(ctx))
    try:
        body = json.loads(out)
    except ValueError:
        raise CheckFailed(f"not JSON:\n{out[:2000]}") from None
    if isinstance(body, dict) and "error" in body:
        raise CheckFailed(f"error answer: {body['error']}")


def run_python_heredoc(cmd: DocCommand, ctx: Context) -> None:
    """`python - <<'PY' … PY` (an SDK snippet) against the live server, from the checkout's
    root, with OPENAI_BASE_URL and OPENAI_API_KEY set as the docs tell the reader to."""
    text = re.sub(r"^(?:\.venv/bin/)?python\b", _python_prefix(ctx), _to_server(cmd.text, ctx))
    _shell(text, ctx, cwd=ctx.root, env=_server_env(ctx))


def run_manage_db(cmd: DocCommand, ctx: Context) -> None:
    """`manage.py` commands that write to the database, run against the *test* database (the
    pytest test has already run `bootstrap`, so the demo organization and owner exist)."""
    assert ctx.database_env is not None
    env = ctx.base_env()
    env.update(ctx.database_env)
    _shell(_manage(cmd.text, ctx), ctx, cwd=ctx.root, env=env)


_PY = r"(?:\.venv/bin/)?python manage\.py"
RUNNERS = [
    Runner("help", rf"{_PY} \w+ --help", run_help),
    Runner("prepare_data", PREPARE, run_prepare_data),
    Runner("git clone", r"git clone <this repo> (\w+) && cd \1", run_git_clone),
    Runner("make check-deploy", r"make check-deploy", run_make_check_deploy),
    Runner(
        "service",
        r"(?:CUDA_VISIBLE_DEVICES=\d+ )?(?:\.venv/bin/)?"
        r"(?:celery -A config (?:worker|beat)|uvicorn config\.asgi:application)\b[^\n]*"
        rf"|{_PY} serve_inference\b[^\n]*",
        run_service,
    ),
    Runner("curl", rf"curl [^\n]*{re.escape(DOC_SERVER)}[^\n]*", run_curl, needs_server=True),
    Runner(
        "python heredoc",
        r"(?:\.venv/bin/)?python - <<'PY'\n.*\nPY",
        run_python_heredoc,
        needs_server=True,
    ),
    Runner(
        "manage.py (database)",
        rf"(?:DJANGO_SUPERUSER_PASSWORD=\S+ )?{_PY} (?:create_api_key|createsuperuser) [^\n]*",
        run_manage_db,
        needs_database=True,
    ),
]


# --- the check ---------------------------------------------------------------------------------


@dataclass
class Plan:
    run: list[tuple[DocCommand, Runner]] = field(default_factory=list)
    tested: list[tuple[DocCommand, Entry]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def plan(root: Path = ROOT) -> Plan:
    """Where each documented command goes, and every problem found without running anything."""
    result = Plan()
    entries = load_registry(root)
    result.problems.extend(registry_problems(entries, root))
    result.problems.extend(broken_links(root))
    used: set[int] = set()
    for cmd in all_commands(root):
        runner = next((r for r in RUNNERS if r.matches(cmd.text)), None)
        if runner is not None:
            result.run.append((cmd, runner))
            continue
        found = [i for i, e in enumerate(entries) if e.matches(cmd.text)]
        if not found:
            result.problems.append(
                f"{cmd}\n    is neither run by scripts/docs_check.py nor listed in {REGISTRY}"
            )
        elif len(found) > 1:
            result.problems.append(f"{cmd}\n    matches several {REGISTRY} entries: {found}")
        else:
            used.add(found[0])
            result.tested.append((cmd, entries[found[0]]))
    for i, entry in enumerate(entries):
        if i not in used:
            result.problems.append(f"{REGISTRY}: {entry.match!r} matches no documented command")
    return result


def run_all(work: Plan, ctx: Context, parallel: int = 4) -> list[str]:
    """Run every runner-matched command the context allows; returns the failures.

    Each command is its own process in its own scratch directory (a service on a free port),
    and most wait on start-up, so `parallel` of them run at once. Those that use the server or
    the database run one at a time afterwards: SQLite takes one writer."""
    allowed = [
        (cmd, runner)
        for cmd, runner in work.run
        if not (runner.needs_server and not ctx.server)
        and not (runner.needs_database and not ctx.database_env)
    ]

    def one(item: tuple[DocCommand, Runner]) -> str | None:
        cmd, runner = item
        try:
            runner.run(cmd, ctx)
        except (CheckFailed, subprocess.TimeoutExpired) as exc:
            return f"{cmd}\n    [{runner.name}] {exc}"
        return None

    shared = [item for item in allowed if item[1].needs_server or item[1].needs_database]
    alone = [item for item in allowed if item not in shared]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        results = list(pool.map(one, alone))
    results += [one(item) for item in shared]
    return [failure for failure in results if failure is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check that every documented command is run.")
    parser.add_argument("--run", action="store_true", help="also run the offline runners")
    parser.add_argument("--list", action="store_true", help="print where each command goes")
    args = parser.parse_args(argv)

    work = plan(ROOT)
    if args.list:
        for cmd, runner in work.run:
            sys.stdout.write(f"run [{runner.name}]  {cmd}\n")
        for cmd, entry in work.tested:
            sys.stdout.write(f"test {entry.tests[0]}  {cmd}\n")
    problems = list(work.problems)
    if args.run:
        with tempfile.TemporaryDirectory(prefix="docs-check-") as tmp:
            problems += run_all(work, Context(root=ROOT, tmp=Path(tmp)))
    for problem in problems:
        sys.stderr.write(f"docs-check: {problem}\n")
    sys.stdout.write(
        f"docs-check: {len(work.run)} commands run here, {len(work.tested)} run by tests, "
        f"{len(problems)} problems\n"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
