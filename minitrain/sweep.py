"""`python -m minitrain.sweep`: the command is minitrain/tools/sweep.py."""

import runpy

if __name__ == "__main__":
    runpy.run_module("minitrain.tools.sweep", run_name="__main__", alter_sys=True)
