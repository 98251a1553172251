"""scripts/launch.py without a distributed job: the error line it surfaces, the pid -> rank lookup, its defaults."""

import ast
import importlib.util
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE = (
    "[WARNING] ME(4242:140000,MainProcess):2026-12-01-04:00:00.000.000 [mindspore/context.py:1] something deprecated\n"
    "[WARNING] DEVICE(4242,7f00,python):2026-12-01-04:00:00.000.000 [mindspore/ccsrc/x.cc:9] Init] op not fused\n"
    "[INFO] ME(4242:140000,MainProcess):2026-12-01-04:00:00.000.000 [mindspore/log.py:1] noise\n"
)
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/repo/mindcv/data/image_folder.py", line 10, in read\n'
    "    raise OSError(path)\n"
    "OSError: /data/x.jpg\n"
    "\n"
    "The above exception was the direct cause of the following exception:\n"
    "\n"
    "Traceback (most recent call last):\n"
    '  File "/repo/train.py", line 5, in <module>\n'
    "    main()\n"
    "    ^^^^^^\n"
    "RuntimeError: could not read the training data: /data/x.jpg\n"
)


@pytest.fixture(scope="module")
def launch():
    spec = importlib.util.spec_from_file_location("launch", os.path.join(REPO, "scripts", "launch.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_first_error_line_skips_mindspore_noise_and_finds_the_error(launch):
    assert launch.first_error_line(NOISE * 15) is None  # a killed worker: warnings only
    # the exception that propagated, not the chained cause and not a frame
    assert launch.first_error_line(NOISE * 15 + TRACEBACK + NOISE) == (
        "RuntimeError: could not read the training data: /data/x.jpg"
    )
    cli = "train.py: --lr must be a finite number > 0, got nan\n"
    assert launch.first_error_line(NOISE + "epoch 1 ...\n" + cli + TRACEBACK) == cli.strip()
    mindspore_error = "[ERROR] ME(4242:1,MainProcess):2026 [mindspore/communication/management.py:1] init failed\n"
    assert launch.first_error_line(NOISE + mindspore_error + TRACEBACK) == mindspore_error.strip()
    logged = "[2026-12-01 04:00:00] mindcv.train ERROR - no space left on device writing /out/x.ckpt\n"
    assert launch.first_error_line("[2026-12-01 04:00:00] mindcv.train WARNING - slow\n" + logged) == logged.strip()
    simple = 'Traceback (most recent call last):\n  File "t.py", line 1\n    1/0\nZeroDivisionError: division by zero\n'
    assert launch.first_error_line(simple + "after\n") == "ZeroDivisionError: division by zero"


def test_failure_report_ends_with_the_failed_ranks_first_error(launch, tmp_path):
    (tmp_path / "worker_0.log").write_text(NOISE * 15 + "[ERROR] ME(1:2,MainProcess):0 [x.py:1] peer lost\n")
    (tmp_path / "worker_1.log").write_text(NOISE * 15 + TRACEBACK)
    report = launch.failure_report(str(tmp_path), ["rank 1 (pid 4243) exit code 1"], 1).splitlines()
    assert report[-1] == (
        "launch: job FAILED: rank 1 (pid 4243) exit code 1: RuntimeError: could not read the training data: "
        f"/data/x.jpg. Per-rank logs: {tmp_path}"
    )
    assert "[WARNING]" not in "\n".join(report)  # the tail of the log is shown without MindSpore's noise
    killed = launch.failure_report(str(tmp_path), ["rank 0 (pid 4242) killed by signal SIGKILL"], 1)
    assert killed.splitlines()[-1].startswith("launch: job FAILED: rank 0 (pid 4242) killed by signal SIGKILL: [ERROR]")
    # Open MPI's layout, no rank named by the launcher: every rank's first error line, by rank
    for rank, text in ((0, NOISE), (1, NOISE + TRACEBACK)):
        (tmp_path / "mpi" / "1" / f"rank.{rank}").mkdir(parents=True)
        (tmp_path / "mpi" / "1" / f"rank.{rank}" / "stdout").write_text(text)
    report = launch.failure_report(str(tmp_path / "mpi"), [], 1).splitlines()
    assert report[-2] == (
        f"launch: rank 1 ({tmp_path / 'mpi' / '1' / 'rank.1' / 'stdout'}): "
        "RuntimeError: could not read the training data: /data/x.jpg"
    )
    assert report[-1].startswith("launch: job FAILED: launcher exit code 1. ")


def test_a_workers_rank_comes_from_the_log_it_writes_without_any_log_line(launch, tmp_path):
    log = tmp_path / "worker_3.log"
    with open(log, "w") as out:  # what msrun does: the worker's stdout is its log file
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], stdout=out)
    try:
        found = launch._worker_logs_by_pid(os.getpid())
        assert found.get(child.pid) == str(log)
        assert launch._rank_of_pid(str(tmp_path), child.pid, found) == 3
        assert launch._rank_of_pid(str(tmp_path), child.pid, {}) is None  # the log names no pid
    finally:
        child.kill()
        child.wait()


def test_workers_get_mindspore_errors_only_unless_the_user_chose(launch, monkeypatch):
    monkeypatch.delenv("GLOG_v", raising=False)
    assert launch._env()["GLOG_v"] == "3"
    monkeypatch.setenv("GLOG_v", "1")
    assert launch._env()["GLOG_v"] == "1"


@pytest.mark.slow
def test_logs_default_to_their_own_folder_under_outputs(tmp_path):
    """The standalone launcher, from another folder, with a stand-in worker script: no training needed."""
    worker = tmp_path / "worker.py"
    worker.write_text("import os, sys\nprint('GLOG_v=' + os.environ.get('GLOG_v', ''), sys.argv[1:3])\n")
    config = tmp_path / "recipe.yaml"
    config.write_text("model: mnasnet_050\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GLOG_v", "LOG_DIR")}
    run = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "launch.py"), "--launcher", "none", str(config)],
        cwd=tmp_path,
        env=dict(env, SCRIPT=str(worker)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    log = tmp_path / "outputs" / "standalone_log" / "standalone.log"
    assert log.read_text().splitlines() == [f"GLOG_v=3 ['-c', '{config}']"]
    assert "[WARNING]" not in run.stdout + run.stderr


CLIS = ["train.py", "validate.py", "infer.py", "export.py", "search.py", "scripts/launch.py"] + [
    f"examples/{name}" for name in ("finetune_imagefolder.py", "feature_extraction.py", "infer_folder.py")
]


def _quiets_mindspore(node: ast.stmt) -> bool:
    """``if __name__ == "__main__": os.environ.setdefault("GLOG_v", "3")``."""
    return (
        isinstance(node, ast.If)
        and ast.unparse(node.test) in ("__name__ == '__main__'", '__name__ == "__main__"')
        and any(ast.unparse(s).replace("'", '"') == 'os.environ.setdefault("GLOG_v", "3")' for s in node.body)
    )


@pytest.mark.parametrize("script", CLIS)
def test_cli_sets_mindspores_log_level_before_importing_it(script):
    """MindSpore reads GLOG_v once, when it is imported: the setting must come first (mindcv and config.py
    import MindSpore too)."""
    tree = ast.parse(open(os.path.join(REPO, script), encoding="utf-8").read())
    first_import = next(
        i
        for i, node in enumerate(tree.body)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        and any(
            (alias.name if isinstance(node, ast.Import) else node.module or "").split(".")[0]
            in ("mindspore", "mindcv", "config", "numpy")
            for alias in node.names
        )
    )
    assert any(_quiets_mindspore(node) for node in tree.body[:first_import]), script


@pytest.mark.slow
def test_a_cli_quiets_mindspore_unless_the_user_chose_a_level(tmp_path):
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['infer.py', '--help']\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "from mindspore import log\nprint('level', log.get_level())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GLOG_v"}
    for user, expected in ((None, "3"), ("1", "1")):
        run = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=REPO,
            env=env if user is None else dict(env, GLOG_v=user),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.splitlines()[-1] == f"level {expected}"
