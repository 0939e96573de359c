"""The README as a front page: its commands on the first screen and runnable as printed, the test
command the one CI runs, its length, and every link of the README and of the manual in docs/
pointing at a file (and a heading) that exists. The README's Python block is run by
test_from_python.py."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

from script_loader import ROOT

TEST_COMMAND = 'pip install -e ".[test]" && python -m pytest -q'


def read(path: str) -> str:
    return open(os.path.join(ROOT, path), encoding="utf-8").read()


def bash_blocks(text: str) -> list[list[str]]:
    return [block.strip().splitlines() for block in re.findall(r"```bash\n(.*?)```", text, re.S)]


def test_the_first_screen_holds_install_train_evaluate_and_the_tests():
    lines = read("README.md").splitlines()[:40]
    for command in ("pip install -e .", "python scripts/train.py --config configs/quickstart.json",
                    "python scripts/evaluate.py --run-dir runs/quickstart", TEST_COMMAND):
        assert command in lines, f"not a line of its own within the README's first 40 lines: {command}"


def test_the_readme_test_command_is_what_ci_runs():
    assert [TEST_COMMAND] in bash_blocks(read("README.md"))
    assert TEST_COMMAND in read(".ci/run").splitlines()


def test_the_readme_is_a_front_page():
    assert len(read("README.md").split()) <= 1500


def test_the_quick_start_commands_run_as_printed():
    """The train command as printed resolves its config (--print-config: no TensorFlow, no
    training); the evaluate script takes the option the README gives it."""
    quick_start = bash_blocks(read("README.md"))[0]
    train = next(line for line in quick_start if "scripts/train.py" in line).split()
    printed = subprocess.run([sys.executable, *train[1:], "--print-config"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["name"] == "quickstart"
    evaluate = next(line for line in quick_start if "scripts/evaluate.py" in line).split()
    helped = subprocess.run([sys.executable, evaluate[1], "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert helped.returncode == 0 and evaluate[2] in helped.stdout


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: str) -> set[str]:
    text = re.sub(r"```.*?```", "", read(path), flags=re.S)
    return {slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.M)}


MANUAL = ["README.md", "CHANGELOG.md"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


@pytest.mark.parametrize("page", MANUAL)
def test_links_point_at_files_and_headings_that_exist(page):
    text = re.sub(r"```.*?```", "", read(page), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        assert os.path.exists(os.path.join(ROOT, resolved)), f"{page}: {target} does not exist"
        if anchor and resolved.endswith(".md"):
            assert anchor in anchors(resolved), f"{page}: no heading #{anchor} in {resolved}"


@pytest.mark.parametrize("page", MANUAL)
def test_the_configs_named_exist(page):
    for name in set(re.findall(r"configs/([\w.]+\.json)", read(page))):
        assert os.path.isfile(os.path.join(ROOT, "configs", name)), f"{page}: configs/{name}"
