"""`python -m minitrain.prepare`: the command is minitrain/tools/prepare.py."""

import runpy

if __name__ == "__main__":
    runpy.run_module("minitrain.tools.prepare", run_name="__main__", alter_sys=True)
