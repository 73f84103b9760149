"""Load train.py's definitions (hyper-parameters, model, optimizer) without running its training:
train.py is a flat script, so we execute it up to its `# Set-up` section."""

from pathlib import Path

TRAIN_PY = Path(__file__).resolve().parents[1] / "train.py"


def load_definitions(path=TRAIN_PY):
    source = path.read_text()
    head = source.split("\n# Set-up\n")[0]
    namespace = {"__name__": "train_definitions", "__file__": str(path)}
    exec(compile(head, str(path), "exec"), namespace)
    return namespace
