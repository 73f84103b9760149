"""What the CLI stand-ins do to the checkout, chosen by STANDIN_MODE:

  edit          change MATRIX_LR in train.py (the default)
  edit_prepare  the same, and also edit prepare.py (the harness must refuse it)
  noop          change nothing
  fail          print an error and exit 1 (like a CLI that lost its network)
  hang          sleep for an hour (the harness must time out and kill it)
  syntax        write a train.py that is not Python
"""

import os
import re
import sys
import time


def act():
    mode = os.environ.get("STANDIN_MODE", "edit")
    if mode == "fail":
        print("error: could not reach the API (stand-in)", file=sys.stderr)
        sys.exit(1)
    if mode == "hang":
        time.sleep(3600)
    if mode == "noop":
        return "I looked at train.py and decided to change nothing.", None
    text = open("train.py").read()
    if mode == "syntax":
        open("train.py", "w").write(text + "\ndef broken(:\n")
        return "Broke it.\nDESCRIPTION: a syntax error", None
    m = re.search(r"^MATRIX_LR = ([0-9.]+)", text, re.MULTILINE)
    old = float(m.group(1))
    new = round(old * 1.25, 6)
    open("train.py", "w").write(text[:m.start(1)] + repr(new) + text[m.end(1):])
    if mode == "edit_prepare":
        with open("prepare.py", "a") as f:
            f.write("\n# the stand-in edited this file too\n")
    return (f"I raised the Muon learning rate.\nDESCRIPTION: MATRIX_LR {old} -> {new} (stand-in)", mode)
