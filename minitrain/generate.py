"""`python -m minitrain.generate`: the command is minitrain/tools/generate.py."""

import runpy

if __name__ == "__main__":
    runpy.run_module("minitrain.tools.generate", run_name="__main__", alter_sys=True)
