"""The launch scripts: valid bash, no placeholder, and `--dry-run` prints the commands a
multi-host run needs (checked by parsing them as a shell would)."""
import os
import pathlib
import re
import shlex
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = sorted(LAUNCH.iterdir())


def dry_run(script: str, *args: str, env: dict | None = None) -> list[list[str]]:
  """The commands `script --dry-run args` prints, each split into words."""
  out = subprocess.run(["bash", str(LAUNCH / script), "--dry-run", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=30,
                       env={**os.environ, **(env or {})})
  assert out.returncode == 0, out.stderr
  return [shlex.split(line[2:]) for line in out.stdout.splitlines() if line.startswith("+ ")]


def remote(command: list[str]) -> list[str]:
  """The words of the remote shell command in `gcloud ... --command=CMD` or `ssh HOST CMD`."""
  for word in command:
    if word.startswith("--command="):
      return shlex.split(word[len("--command="):])
  return shlex.split(command[command.index("BatchMode=yes") + 2])


def test_scripts_parse_and_name_no_placeholder():
  assert {p.name for p in SCRIPTS} >= {"tpu_pod.sh", "multihost_gpu.sh", "slurm_gpu.sbatch"}
  for path in SCRIPTS:
    subprocess.run(["bash", "-n", str(path)], check=True)
    text = path.read_text()
    assert not re.search(r"your-org|example\.com|<[a-z_]+>|TODO|FIXME", text), path.name


def test_tpu_pod_ships_the_working_tree_installs_and_starts_every_worker():
  commands = dry_run("tpu_pod.sh", "--project=p1", "my-tpu", "us-central2-b", "gs://b/run 1",
                     "--config.epochs=3", "--config.arch=a b")
  pack, copy, install, start = commands
  assert "git ls-files -z --cached --others --exclude-standard" in " ".join(pack)
  assert copy[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert copy[6] == "my-tpu:sdarts_jax.tar.gz" and copy[5].endswith(".tar.gz")
  for c in (copy, install, start):
    assert {"--zone=us-central2-b", "--worker=all", "--project=p1"} <= set(c), c
  assert install[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
  steps = " ".join(remote(install))
  assert "tar -xzf sdarts_jax.tar.gz -C sdarts_jax" in steps
  assert "pip install -q -e .[tpu]" in steps
  words = remote(start)
  assert "SDARTS_DISTRIBUTED=auto" in words
  main = words[words.index("SDARTS_DISTRIBUTED=auto") + 1:]
  assert main[:3] == [".venv/bin/python", "-m", "sdarts_jax.main"]
  # Arguments with spaces arrive as one word each on the worker.
  assert main[3:7] == ["--workdir=gs://b/run 1", "--config=configs/cifar10_adv.py",
                       "--config.epochs=3", "--config.arch=a b"]
  assert start[-4:] == ["|", "tee", "-a", "runs/tpu_my-tpu.log"]


def test_tpu_pod_clones_a_named_commit_instead():
  commands = dry_run("tpu_pod.sh", "--repo=https://github.com/me/sdarts_jax", "--commit=abc123",
                     "t", "z", "gs://b/r", "--config=configs/cifar10_rs.py")
  assert len(commands) == 2 and not any("scp" in c for c in commands)
  steps = " ".join(remote(commands[0]))
  assert "git clone -q https://github.com/me/sdarts_jax sdarts_jax" in steps
  assert "checkout -q abc123" in steps
  assert "--config=configs/cifar10_rs.py" in remote(commands[1])
  assert "--config=configs/cifar10_adv.py" not in remote(commands[1])


@pytest.mark.parametrize("args", [["t", "z"], ["--repo=x", "t", "z", "w"], ["--bogus", "t", "z", "w"]])
def test_tpu_pod_usage_errors(args):
  out = subprocess.run(["bash", str(LAUNCH / "tpu_pod.sh"), *args], capture_output=True,
                       text=True, timeout=30)
  assert out.returncode == 2 and out.stdout == ""


def test_multihost_gpu_starts_one_process_per_host_with_its_id():
  commands = dry_run("multihost_gpu.sh", "--hosts=gpu-a,gpu-b,gpu-c", "--port=2222",
                     "/shared/runs/x", "--config.epochs=3")
  assert [c[:4] for c in commands] == [["ssh", "-o", "BatchMode=yes", h]
                                       for h in ("gpu-a", "gpu-b", "gpu-c")]
  for i, c in enumerate(commands):
    words = remote(c)
    assert words[:3] == ["cd", str(ROOT), "&&"]
    env = dict(w.split("=", 1) for w in words[4:7])
    assert env == {"JAX_COORDINATOR_ADDRESS": "gpu-a:2222", "JAX_NUM_PROCESSES": "3",
                   "JAX_PROCESS_ID": str(i)}
    assert words[7:] == [".venv/bin/python", "-m", "sdarts_jax.main", "--workdir=/shared/runs/x",
                         "--config=configs/cifar10_adv.py", "--config.epochs=3"]
    assert c[-6:] == ["2>&1", "|", "sed", "-u", f"s/^/[{c[3]}] /", "&"]


def test_multihost_gpu_on_this_host_needs_the_three_variables():
  (cd, start), = [dry_run("multihost_gpu.sh", "/w", env={"COORDINATOR": "h0:1", "NUM_HOSTS": "2",
                                                           "HOST_ID": "1"})]
  assert start[:4] == ["env", "JAX_COORDINATOR_ADDRESS=h0:1", "JAX_NUM_PROCESSES=2",
                       "JAX_PROCESS_ID=1"]
  out = subprocess.run(["bash", str(LAUNCH / "multihost_gpu.sh"), "/w"], capture_output=True,
                       text=True, timeout=30, env={"PATH": os.environ["PATH"]})
  assert out.returncode == 2 and "COORDINATOR" in out.stderr


def test_slurm_example_runs_the_gpu_script_on_every_node(tmp_path):
  fake = tmp_path / "scontrol"  # SLURM's node-list expansion
  fake.write_text("#!/bin/sh\necho node-a\necho node-b\n")
  fake.chmod(0o755)
  env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "DRY_RUN": "1",
         "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NTASKS": "2", "SLURM_SUBMIT_DIR": str(ROOT)}
  out = subprocess.run(["bash", str(LAUNCH / "slurm_gpu.sbatch"), "/shared/w", "--config.epochs=2"],
                       capture_output=True, text=True, timeout=30, env=env)
  assert out.returncode == 0, out.stderr
  srun = shlex.split(out.stdout.splitlines()[0][2:])
  assert srun[0] == "srun" and "--ntasks=2" in srun and "--ntasks-per-node=1" in srun
  assert "--export=ALL,COORDINATOR=node-a:12345" in srun
  assert srun[-4:] == ["launch/multihost_gpu.sh", "--dry-run", "/shared/w", "--config.epochs=2"]
  # What srun then runs on node 1 (SLURM_PROCID=1).
  (cd, start), = [dry_run("multihost_gpu.sh", "/shared/w", "--config.epochs=2",
                          env={"COORDINATOR": "node-a:12345", "SLURM_NTASKS": "2",
                               "SLURM_PROCID": "1"})]
  assert start[1:4] == ["JAX_COORDINATOR_ADDRESS=node-a:12345", "JAX_NUM_PROCESSES=2",
                        "JAX_PROCESS_ID=1"]
  header = (LAUNCH / "slurm_gpu.sbatch").read_text()
  assert "#SBATCH --ntasks-per-node=1" in header
