"""`python -m minitrain.report`: the command is minitrain/tools/report.py."""

import runpy

if __name__ == "__main__":
    runpy.run_module("minitrain.tools.report", run_name="__main__", alter_sys=True)
