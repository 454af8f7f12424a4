"""The README's Python examples run as shown (each in a fresh namespace, all in one child
process, so that an example's primitive or seed does not leak into the other tests)."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = """
import sys, traceback
blocks = sys.stdin.read().split("\\0")
for i, block in enumerate(blocks):
    try:
        exec(compile(block, f"README block {i}", "exec"), {"__name__": "__readme__"})
    except Exception:
        print(f"README example {i} failed:\\n{block}", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
"""


def test_every_python_example_in_the_readme_runs(tmp_path):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert len(blocks) >= 10
    env = {**os.environ, "PYTHONPATH": ROOT, "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", RUNNER], input="\0".join(blocks), text=True,
                          capture_output=True, cwd=tmp_path, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
