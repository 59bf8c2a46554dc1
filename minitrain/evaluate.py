"""`python -m minitrain.evaluate`: the command is minitrain/tools/evaluate.py."""

import runpy

if __name__ == "__main__":
    runpy.run_module("minitrain.tools.evaluate", run_name="__main__", alter_sys=True)
