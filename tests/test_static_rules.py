"""Static rules over the project's own code, each with controls that show its checker can fail.

1. `torch.load` only with `weights_only=True`: anything else unpickles the file, and checkpoints and
   caches are files a user can be handed.
2. No pickle-family import or call (`yaml.load`, `pickle`, `np.load(allow_pickle=True)`, ...), same reason.
3. Every server our code starts (Python, Makefile, CI and shell scripts, tests included: they start real
   servers) binds 127.0.0.1/localhost, or a host taken from a `$VARIABLE` the user sets.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()  # its controls hold the violations as text, so rule 3 skips it
PACKAGES = ("tasks", "flows", "models", "kernels", "reports", "scripts")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def python_files(with_tests: bool) -> list[Path]:
    files = [ROOT / "cli.py", *(p for d in PACKAGES for p in sorted((ROOT / d).rglob("*.py")))]
    if with_tests:
        files += [p for p in sorted((ROOT / "tests").rglob("*.py")) if p != THIS]
    return [p for p in files if p.is_file()]


def script_files() -> list[Path]:
    """Makefile, CI, deployment and shell files: where a command line could start a server."""
    files = [ROOT / "Makefile", *sorted(ROOT.glob("*.sh"))]
    files += [p for d in (".ci", "deployments", "scripts") for p in sorted((ROOT / d).rglob("*")) if p.is_file()]
    return [p for p in files if p.is_file()]


def dotted(node: ast.AST) -> str:
    """`a.b.c` for a Name/Attribute chain, else ''."""
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return node.id if isinstance(node, ast.Name) else ""


def imported_names(tree: ast.AST) -> dict[str, str]:
    """Local name -> the dotted name it stands for (`import numpy as np` gives np -> numpy)."""
    names = {}
    for node in ast.walk(tree):
        for a in node.names if isinstance(node, ast.Import) else ():  # `import a.b` binds a
            names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        for a in node.names if isinstance(node, ast.ImportFrom) and node.module else ():
            names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def resolved(node: ast.AST, names: dict[str, str]) -> str:
    """The dotted name an expression refers to, through the module's imports (`np.load` -> `numpy.load`)."""
    head, _, rest = dotted(node).partition(".")
    full = names.get(head, head)
    return f"{full}.{rest}" if rest else full


def keyword_is(call: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


# Rules 1 and 2 cover the packages and cli.py, not tests/: a test only reads back files it just wrote
# in its own tmp_path (tests/flows/test_resume.py reads a DeepSpeed checkpoint with weights_only=False).
def torch_load_findings(source: str, path: str = "<snippet>") -> list[str]:
    tree = ast.parse(source)
    names = imported_names(tree)
    return [
        f"{path}:{n.lineno}: torch.load without weights_only=True"
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and resolved(n.func, names) in {"torch.load", "torch.serialization.load"}
        and not keyword_is(n, "weights_only", True)  # also catches **kwargs: it cannot be shown to be True
    ]


UNPICKLING_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "shelve", "marshal", "joblib"}
YAML_UNSAFE = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}
YAML_UNSAFE |= {"Loader", "UnsafeLoader", "FullLoader"}


def unpickling_findings(source: str, path: str = "<snippet>") -> list[str]:
    tree = ast.parse(source)
    names = imported_names(tree)
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import | ast.ImportFrom):
            mods = [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""]
            out += [f"{path}:{n.lineno}: imports {m}" for m in mods if m.split(".")[0] in UNPICKLING_MODULES]
            if isinstance(n, ast.ImportFrom) and n.module == "yaml":
                out += [f"{path}:{n.lineno}: yaml.{a.name}" for a in n.names if a.name in YAML_UNSAFE]
        elif isinstance(n, ast.Attribute) and resolved(n, names) in {f"yaml.{a}" for a in YAML_UNSAFE}:
            out.append(f"{path}:{n.lineno}: {resolved(n, names)}")
        elif isinstance(n, ast.Call) and (name := resolved(n.func, names)).endswith("read_pickle"):
            out.append(f"{path}:{n.lineno}: {name}")
        elif isinstance(n, ast.Call) and any(k.arg == "allow_pickle" for k in n.keywords):
            if not keyword_is(n, "allow_pickle", False):
                out.append(f"{path}:{n.lineno}: {resolved(n.func, names)}(allow_pickle=...)")
    return out


# Rule 3, command lines. Quotes, commas and brackets become spaces, so a Python argv list
# (["prefect", "server", "start", "--host", "127.0.0.1"]) reads like the shell command it runs.
SERVER_COMMANDS = re.compile(
    r"\bprefect server start\b|\bmlflow (server|ui)\b|\bray start\b|\buvicorn\s+[\w.]+:\w+|-m http\.server\b"
    r"|(^|[\s/])(slurmctld|slurmd)(\s|$)|(^|[\s/])postgres\s+-\w|\bpg_ctl\b.*\bstart\b"  # a postgres, not the word
)
# The flag each of those takes for its address; a command with none of them gets the tool's default
# host, which for http.server, ray and slurm is every interface, so the rule wants it said.
HOST_FLAG = re.compile(r"(?<!\S)(?:--host|--bind|--node-ip-address|-h|-b)(?:\s+|=)(\S+)")
USER_SETTING = re.compile(r"^\$[({]?\w+[)}]?$")  # $HOST, ${HOST}, $(HOST): the user's own choice
# Slurm's daemons take no address to bind: the test Slurm runs them in a network namespace whose one
# interface is the loopback (tests/tasks/cluster/netns.py), which the line that starts them says.
IN_LOOPBACK_NETNS = re.compile(r"\bnsenter (f )?--net=\S+ (slurmctld|slurmd)(\s|$)")  # f: an f-string


def command_findings(text: str, path: str = "<snippet>") -> tuple[list[str], list[str]]:
    """(servers started, violations), each as `path:line: command`."""
    starts, bad = [], []
    for i, raw in enumerate(text.splitlines(), 1):
        raw = re.sub(r"\$\((\w+)\)", r"${\1}", raw)  # Make's $(HOST) keeps its brackets
        line = " ".join(re.sub(r"[\"'`,\[\]()]", " ", raw).split())
        if line.startswith("#") or not SERVER_COMMANDS.search(line):
            continue
        starts.append(f"{path}:{i}: {line}")
        if IN_LOOPBACK_NETNS.search(line):
            continue
        hosts = HOST_FLAG.findall(line)
        if not hosts or not all(h in LOOPBACK or USER_SETTING.match(h) for h in hosts):
            bad.append(f"{path}:{i}: {line}")
    return starts, bad


def host_of(call: ast.Call) -> ast.AST | None:
    """The host a bind/server call gets: `s.bind((host, port))`, `HTTPServer((host, port), ...)`,
    `uvicorn.run(app, host=...)`; None when the call is not one of those."""
    name = dotted(call.func)
    first = call.args[0] if call.args else None
    if name.endswith(".bind"):  # a bind to anything but a literal (host, port) cannot be shown loopback
        return first.elts[0] if isinstance(first, ast.Tuple) and first.elts else first
    if name.lower().endswith("server") and isinstance(first, ast.Tuple) and first.elts:  # HTTPServer, create_server
        return first.elts[0]
    if name == "uvicorn.run":
        return next((k.value for k in call.keywords if k.arg == "host"), ast.Constant("127.0.0.1"))
    return None


def bind_findings(source: str, path: str = "<snippet>") -> tuple[list[str], list[str]]:
    """Rule 3 in Python: (binds, violations); a host must be a loopback literal to pass."""
    starts, bad = [], []
    for n in ast.walk(ast.parse(source)):
        if isinstance(n, ast.Call) and (host := host_of(n)) is not None:
            shown = f"{path}:{n.lineno}: {ast.unparse(n)}"
            starts.append(shown)
            if not (isinstance(host, ast.Constant) and host.value in LOOPBACK):
                bad.append(shown)
    return starts, bad


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def all_server_starts() -> tuple[list[str], list[str]]:
    found = [bind_findings(p.read_text(), rel(p)) for p in python_files(with_tests=True)]
    found += [command_findings(p.read_text(errors="replace"), rel(p)) for p in python_files(True) + script_files()]
    return [s for f in found for s in f[0]], [b for f in found for b in f[1]]


# torch.distributed's TCPStore (the MASTER_PORT store, torchrun's rendezvous) listens on every
# interface whatever MASTER_ADDR says (seen with `ss -ltn`, torch 2.13). To pass, a process group gets
# its store passed in (a HashStore for one rank, a TCPStore on a socket bound to 127.0.0.1), and a
# TCPStore that may serve is given that socket (master_listen_fd).
# A run over several nodes is the user's own setting of otherwise: its rendezvous must be reachable from
# the other nodes. The line that starts or joins one says so (ACROSS_NODES), in the files that may.
ACROSS_NODES = "# across nodes:"
MAY_CROSS_NODES = {"tasks/train/node.py", "tasks/train/setup.py"}


def distributed_findings(source: str, path: str = "<snippet>") -> list[str]:
    calls = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call | ast.Constant)]
    lines = source.splitlines()
    return [
        f"{path}:{n.lineno}: {ast.unparse(n)}"
        for n in calls
        if not (path in MAY_CROSS_NODES and ACROSS_NODES in lines[n.lineno - 1])
        and (
            (isinstance(n, ast.Constant) and n.value in {"torch.distributed.run", "torchrun"})  # an argv word
            or (
                isinstance(n, ast.Call)
                and dotted(n.func).split(".")[-1] in {"init_process_group", "init_distributed"}
                and not any(k.arg == "store" for k in n.keywords)
            )
            or (isinstance(n, ast.Call) and serves_on_its_own_socket(n))
        )
    ]


def serves_on_its_own_socket(call: ast.Call) -> bool:
    """A TCPStore that may be the master (is_master, its 4th argument, not False) and binds its own socket."""
    if dotted(call.func).split(".")[-1] != "TCPStore" or len(call.args) > 7:  # the 8th: master_listen_fd
        return False
    kw = {k.arg: k.value for k in call.keywords}
    master = call.args[3] if len(call.args) > 3 else kw.get("is_master", ast.Constant(False))
    return "master_listen_fd" not in kw and not (isinstance(master, ast.Constant) and master.value is False)


@pytest.mark.parametrize("checker", [torch_load_findings, unpickling_findings], ids=["rule1", "rule2"])
def test_rules_1_and_2_hold(checker):
    assert [f for p in python_files(with_tests=False) for f in checker(p.read_text(), rel(p))] == []


def test_rule3_every_server_binds_loopback():
    starts, bad = all_server_starts()
    assert bad == []
    # The scan must still see the servers we know of, or it has silently stopped looking.
    assert any("tests/flows/test_deployment.py" in s and "prefect server start" in s for s in starts), starts
    assert any("tasks/train/launch.py" in s and ".bind(" in s for s in starts), starts


def test_rule3_distributed_store_binds_loopback():
    assert [f for p in python_files(with_tests=True) for f in distributed_findings(p.read_text(), rel(p))] == []


def violations(checker, snippet: str) -> list[str]:
    found = checker(snippet)
    return found[1] if isinstance(found, tuple) else found  # rule 3's checkers also return what they saw


# Negative controls: each checker reports a snippet that breaks its rule, so the tests above can fail.
@pytest.mark.parametrize(
    "checker, bad",
    [
        (torch_load_findings, "import torch\ntorch.load(p)"),
        (torch_load_findings, "import torch\ntorch.load(p, weights_only=False)"),
        (torch_load_findings, "import torch\ntorch.load(p, **kw)"),  # cannot be shown to be True
        (torch_load_findings, "from torch import load\nload(p)"),
        (unpickling_findings, "import yaml\nyaml.load(s)"),
        (unpickling_findings, "import yaml\nyaml.unsafe_load(s)"),
        (unpickling_findings, "import yaml\nyaml.full_load(s)"),
        (unpickling_findings, "import yaml\nyaml.load(s, Loader=yaml.Loader)"),
        (unpickling_findings, "from yaml import UnsafeLoader"),
        (unpickling_findings, "import pickle"),
        (unpickling_findings, "import dill as d"),
        (unpickling_findings, "from shelve import open"),
        (unpickling_findings, "import numpy as np\nnp.load(p, allow_pickle=True)"),
        (unpickling_findings, "import pandas as pd\npd.read_pickle(p)"),
        (command_findings, "mlflow server --host 0.0.0.0"),
        (command_findings, "mlflow ui --port 5000"),  # no host: the rule wants it said, not a default
        (command_findings, '["prefect", "server", "start", "--host", "0.0.0.0"]'),
        (command_findings, "python -m http.server 8000"),  # http.server's default is every interface
        (command_findings, "ray start --head"),
        (command_findings, 'pg("pg_ctl", "start", "-D", data)'),  # postgresql.conf's listen_addresses, unseen
        (command_findings, "/usr/lib/postgresql/15/bin/postgres -D data"),
        (command_findings, 'subprocess.run(["slurmctld"], env=env)'),  # every interface, and no namespace said
        (bind_findings, 's.bind(("0.0.0.0", 0))'),
        (bind_findings, 's.bind(("", 0))'),
        (bind_findings, "s.bind((host, 0))"),
        (bind_findings, 'socket.create_server(("0.0.0.0", 8000))'),
        (distributed_findings, "import deepspeed\ndeepspeed.init_distributed(dist_backend='gloo')"),
        (distributed_findings, 'cmd = [sys.executable, "-m", "torch.distributed.run", "train.py"]'),
        (distributed_findings, "import torch.distributed as d\nd.TCPStore('127.0.0.1', 0, 2, True)"),
        (distributed_findings, "from torch.distributed import TCPStore\nTCPStore(h, p, 2, is_master=rank == 0)"),
        # A file outside MAY_CROSS_NODES cannot say a line crosses nodes.
        (distributed_findings, 'cmd = ["torchrun", "train.py"]  # across nodes: said where it may not be'),
    ],
)
def test_checker_reports_a_violation(checker, bad):
    assert violations(checker, bad)


# Positive controls: the safe forms pass, and rule 3's checkers still see them as servers.
@pytest.mark.parametrize(
    "checker, ok",
    [
        (torch_load_findings, "import torch as t\nt.load(p, map_location='cpu', weights_only=True)"),
        (unpickling_findings, "import yaml, numpy as np\nyaml.safe_load(s)\nyaml.safe_dump(d)\nnp.load(p)"),
        (unpickling_findings, "import numpy as np\nnp.load(p, allow_pickle=False)"),
        (command_findings, "prefect server start --host 127.0.0.1"),
        (command_findings, '["mlflow", "ui", "--host=localhost"]'),
        (command_findings, "uvicorn app:app --host $(HOST)"),  # the user's own setting
        (command_findings, 'subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "slurmd"], env=env)'),
        (command_findings, 'pg("pg_ctl", "start", "-D", data, "-o", "-h 127.0.0.1 -p 5433")'),
        (bind_findings, 's.bind(("127.0.0.1", 0))'),
        (bind_findings, 'HTTPServer(("localhost", 8000), Handler)'),
        (bind_findings, "uvicorn.run(app)"),  # uvicorn.run's default host is 127.0.0.1
        (distributed_findings, "import torch.distributed as d\nd.init_process_group('gloo', store=HashStore())"),
        (
            distributed_findings,
            "import torch.distributed as d\nd.TCPStore('127.0.0.1', p, 2, r == 0, master_listen_fd=fd)",
        ),
        (distributed_findings, "import torch.distributed as d\nd.TCPStore('127.0.0.1', p, 2, is_master=False)"),
    ],
)
def test_checker_passes_the_safe_form(checker, ok):
    assert violations(checker, ok) == []
    if checker in (command_findings, bind_findings):
        assert checker(ok)[0]
